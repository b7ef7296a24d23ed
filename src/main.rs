//! The `llamagate` command line: `serve` runs the gateway.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use llamagate::config::{CliOverrides, DeviceSetting, Settings};
use llamagate::engine::{compiled_cpu_features, router::EngineRouter};

#[derive(Parser)]
#[command(
    name = "llamagate",
    version,
    about = "OpenAI-compatible gateway for local GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured models over the OpenAI API.
    Serve {
        /// Config file (TOML).
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Address to listen on; overrides server.bind.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Print the OpenAPI document (what /openapi.json serves).
    Openapi,
    /// Measure a running OpenAI-compatible server (or one llamagate started here).
    Bench {
        /// The server's OpenAI base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
        url: String,
        /// Start llamagate with this config (on a free port) and measure it.
        #[arg(long)]
        spawn: Option<PathBuf>,
        /// Models to measure (default: every model the server lists).
        #[arg(long = "model")]
        models: Vec<String>,
        /// Prompt lengths in words; 0 is a short question.
        #[arg(long, value_delimiter = ',', default_value = "0,512")]
        prompt_words: Vec<usize>,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
        concurrency: Vec<usize>,
        /// Tokens to generate per request.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Requests per concurrency level (at least the concurrency).
        #[arg(long, default_value_t = 8)]
        requests: usize,
        /// Send the same prompt in every request of a scenario (after reading it once),
        /// to measure TTFT on prefix-cache hits; by default each prompt is fresh.
        #[arg(long, conflicts_with_all = ["overhead", "embeddings"])]
        repeat_prompt: bool,
        /// API key for the server.
        #[arg(long, env = "OPENAI_API_KEY")]
        api_key: Option<String>,
        /// Directory for results.csv, results.json and chart.svg.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Measure the gateway's overhead instead: the --spawn config's model (or --model)
        /// in-process vs through HTTP, --requests runs each way.
        #[arg(long, requires = "spawn")]
        overhead: bool,
        /// Sampling temperature of the --overhead runs (0: greedy).
        #[arg(long, default_value_t = 0.0, requires = "overhead")]
        temperature: f64,
        /// Measure `/v1/embeddings` instead: inputs/s and tokens/s by --batch and
        /// --input-words, from the first --concurrency level of clients.
        #[arg(long, conflicts_with = "overhead")]
        embeddings: bool,
        /// Inputs per embeddings request.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batch: Vec<usize>,
        /// Words per embeddings input.
        #[arg(long, value_delimiter = ',', default_value = "12,120")]
        input_words: Vec<usize>,
    },
    /// Download a model from the Hugging Face hub into the models folder, where
    /// `llamagate serve` serves it under its file stem (HF_ENDPOINT for a mirror, HF_TOKEN
    /// for gated repos). Resumes an interrupted download; checks the hub's sha256.
    Pull {
        /// hf://owner/repo[:QUANT], hf://owner/repo/file.gguf or hf.co/owner/repo:QUANT,
        /// each optionally @revision.
        reference: String,
        /// The models folder (scheduler.models_dir).
        #[arg(long, default_value = "models")]
        dir: PathBuf,
    },
    /// Re-quantize a GGUF file (keeps the tokenizer and chat template).
    Quantize {
        /// The source GGUF.
        input: PathBuf,
        /// Where to write the result.
        output: PathBuf,
        /// f32, f16, q8_0, q6_k, q5_k, q5_0, q4_k, q4_0, q4_1, q3_k or q2_k.
        #[arg(long = "type", value_name = "TYPE")]
        quant: String,
    },
}

/// `llamagate pull`: a progress bar on a terminal, a line every few seconds otherwise.
async fn pull(reference: String, dir: PathBuf) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering;
    let reference = llamagate::pull::Reference::parse(&reference).map_err(anyhow::Error::msg)?;
    let files = llamagate::pull::resolve(&reference).await?;
    for f in &files {
        eprintln!(
            "{reference}: {} ({:.1} MiB)",
            f.path,
            f.size as f64 / 1048576.0
        );
    }
    let progress = std::sync::Arc::new(llamagate::pull::Progress::default());
    let work = llamagate::pull::pull(&reference, &files, &dir, progress.clone());
    tokio::pin!(work);
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut last_line = std::time::Instant::now();
    let pulled = loop {
        tokio::select! {
            result = &mut work => break result?,
            _ = tick.tick() => {
                let (done, total) = (progress.done.load(Ordering::Relaxed), progress.total.load(Ordering::Relaxed));
                bar.set_length(total);
                bar.set_position(done);
                if !terminal && last_line.elapsed() >= std::time::Duration::from_secs(5) {
                    last_line = std::time::Instant::now();
                    eprintln!("downloaded {:.1} of {:.1} MiB", done as f64 / 1048576.0, total as f64 / 1048576.0);
                }
            }
        }
    };
    bar.finish_and_clear();
    println!(
        "pulled {} into {} ({:.1} MiB downloaded now); `llamagate serve` serves it as `{}`",
        reference,
        dir.display(),
        pulled.fetched as f64 / 1048576.0,
        pulled.model
    );
    Ok(())
}

/// Runs `work` on an actix system; its error, if any, is printed and the exit code says it.
fn run_to_exit(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    match actix_web::rt::System::new().block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(to_stderr: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("LLAMAGATE_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,mistralrs_core=warn,mistralrs=warn,llama-cpp-2=warn",
            )
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(move || -> Box<dyn std::io::Write> {
            if to_stderr {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            }
        })
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Commands whose stdout is a report keep their logs on stderr.
    init_tracing(!matches!(cli.command, Command::Serve { .. }));
    match cli.command {
        #[cfg(feature = "mistralrs")]
        Command::Quantize {
            input,
            output,
            quant,
        } => quantize(&input, &output, &quant),
        #[cfg(not(feature = "mistralrs"))]
        Command::Quantize { .. } => {
            eprintln!("error: this binary was built without the mistral.rs engine, whose candle library `quantize` uses; build it with `cargo build` (default features)");
            std::process::ExitCode::FAILURE
        }
        Command::Bench {
            url,
            spawn,
            models,
            prompt_words,
            concurrency,
            max_tokens,
            requests,
            repeat_prompt,
            api_key,
            out,
            overhead,
            temperature,
            embeddings,
            batch,
            input_words,
        } => {
            if embeddings {
                let plan = llamagate::bench::embeddings::EmbedPlan {
                    base_url: url,
                    api_key,
                    models,
                    input_words,
                    batch_sizes: batch,
                    concurrency: concurrency.first().copied().unwrap_or(1),
                    requests,
                };
                return run_to_exit(run_embed_bench(plan, spawn, out));
            }
            if overhead {
                let config = spawn.unwrap_or_default();
                let plan = llamagate::bench::overhead::OverheadPlan {
                    model: models.first().cloned(),
                    runs: requests.max(1),
                    max_tokens,
                    prompt_words: prompt_words.first().copied().unwrap_or(0),
                    temperature,
                };
                return run_to_exit(run_overhead(config, plan, out));
            }
            let plan = llamagate::bench::BenchPlan {
                base_url: url,
                api_key,
                models,
                prompt_words,
                concurrency,
                max_tokens,
                requests,
                repeat_prompt,
            };
            run_to_exit(run_bench(plan, spawn, out))
        }
        Command::Pull { reference, dir } => run_to_exit(pull(reference, dir)),
        Command::Openapi => {
            print!("{}", llamagate::api::openapi::document_json());
            std::process::ExitCode::SUCCESS
        }
        Command::Serve { config, bind } => {
            let settings = match Settings::load(&config, &CliOverrides { bind }) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            run_to_exit(serve(settings))
        }
    }
}

/// Starts llamagate with `config` on a free port, when asked: its OpenAI base URL and
/// a handle that keeps it running.
fn spawn_for_bench(
    spawn: Option<PathBuf>,
) -> anyhow::Result<Option<(String, actix_web::dev::ServerHandle)>> {
    let Some(config) = spawn else {
        return Ok(None);
    };
    let mut settings = Settings::load(
        &config,
        &CliOverrides {
            bind: Some("127.0.0.1:0".into()),
        },
    )?;
    // A benchmark's requests are no one's usage.
    settings.auth.store = Some(PathBuf::new());
    let built = llamagate::build_server(settings, Arc::new(EngineRouter::default()))?;
    let url = format!("http://{}/v1", built.addr);
    let handle = built.server.handle();
    actix_web::rt::spawn(built.server);
    Ok(Some((url, handle)))
}

async fn run_embed_bench(
    mut plan: llamagate::bench::embeddings::EmbedPlan,
    spawn: Option<PathBuf>,
    out: PathBuf,
) -> anyhow::Result<()> {
    let _server = spawn_for_bench(spawn)?.map(|(url, handle)| {
        plan.base_url = url;
        handle
    });
    let bar = indicatif::ProgressBar::new(0);
    let report = llamagate::bench::embeddings::run(&plan, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("embeddings.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    print!("{}", llamagate::bench::embeddings::markdown(&report));
    eprintln!("wrote {}/embeddings.json", out.display());
    Ok(())
}

async fn run_bench(
    mut plan: llamagate::bench::BenchPlan,
    spawn: Option<PathBuf>,
    out: PathBuf,
) -> anyhow::Result<()> {
    let _server = spawn_for_bench(spawn)?.map(|(url, handle)| {
        plan.base_url = url;
        handle
    });
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} requests {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = llamagate::bench::run(&plan, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.csv"),
        llamagate::bench::report::csv(&report),
    )?;
    std::fs::write(
        out.join("results.json"),
        llamagate::bench::report::json(&report),
    )?;
    std::fs::write(
        out.join("chart.svg"),
        llamagate::bench::report::svg(&report),
    )?;
    print!("{}", llamagate::bench::report::markdown(&report));
    eprintln!(
        "wrote {0}/results.csv, {0}/results.json, {0}/chart.svg",
        out.display()
    );
    Ok(())
}

async fn run_overhead(
    config: PathBuf,
    plan: llamagate::bench::overhead::OverheadPlan,
    out: PathBuf,
) -> anyhow::Result<()> {
    let settings = Settings::load(&config, &CliOverrides::default())?;
    let bar = indicatif::ProgressBar::new(plan.runs as u64);
    let report =
        llamagate::bench::overhead::run(settings, plan, |done, _| bar.set_position(done as u64))
            .await?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("overhead.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    print!("{}", llamagate::bench::overhead::markdown(&report));
    eprintln!("wrote {}/overhead.json", out.display());
    Ok(())
}

#[cfg(feature = "mistralrs")]
fn quantize(
    input: &std::path::Path,
    output: &std::path::Path,
    quant: &str,
) -> std::process::ExitCode {
    let qtype = match quant.parse::<llamagate::quantize::QuantType>() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let result = llamagate::quantize::quantize_file(input, output, qtype, |done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    });
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            println!(
                "wrote {} ({} tensors, {:.1} MB, {:.2} bits/weight) in {:.1} s",
                output.display(),
                report.tensors,
                report.output_bytes as f64 / 1e6,
                report.bits_per_weight(),
                started.elapsed().as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The GPU `device = "auto"` picks in a GPU build, in words.
#[cfg(feature = "mistralrs")]
fn gpu_device() -> String {
    match mistralrs::best_device(false) {
        Ok(d) if !d.is_cpu() => llamagate::engine::mistralrs::describe_device(&d),
        _ => "cpu (no GPU found)".to_string(),
    }
}

/// No GPU build without mistral.rs (the `cuda`/`metal` features turn it on).
#[cfg(not(feature = "mistralrs"))]
fn gpu_device() -> String {
    "cpu (built without GPU support)".to_string()
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let gpu_built = cfg!(any(feature = "cuda", feature = "metal"));
    let auto_device = if gpu_built {
        gpu_device()
    } else {
        "cpu (built without GPU support)".to_string()
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        cpu_features = %compiled_cpu_features().join(","),
        cuda = cfg!(feature = "cuda"),
        metal = cfg!(feature = "metal"),
        auto_device = %auto_device,
        "llamagate starting"
    );
    for m in &settings.models {
        let device = match m.device {
            DeviceSetting::Auto => format!("auto -> {auto_device}"),
            other => other.to_string(),
        };
        let (engine, why) = m.engine_choice();
        tracing::info!(model = %m.name, aliases = ?m.aliases, source = %m.source, device = %device, %engine, engine_reason = why, pinned = m.pinned, "model configured");
    }
    let built = llamagate::build_server(settings, Arc::new(EngineRouter::default()))?;
    tracing::info!("listening on http://{}", built.addr);
    built.server.await?;
    // What the last interval counted: written before exiting.
    let usage = built.state.usage.clone();
    tokio::task::spawn_blocking(move || usage.flush())
        .await?
        .map_err(|e| anyhow::anyhow!("the usage store: {e}"))?;
    Ok(())
}
