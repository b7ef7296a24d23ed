//! JSON-schema constraints for the llama.cpp engine: llguidance (the grammar engine
//! mistral.rs uses too) compiles a schema into a matcher that masks, at every step, the
//! tokens that would break it.

use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};

/// A grammar compiler over the model's vocabulary (walks every token once).
pub fn factory(model: &LlamaModel) -> Result<ParserFactory, String> {
    let vocab = model.vocab();
    let n_vocab = u32::try_from(model.n_vocab()).unwrap_or(0);
    let eot = vocab.eot().0;
    let end = if eot < 0 { vocab.eos().0 } else { eot };
    let end = u32::try_from(end).unwrap_or(0);
    let info = TokRxInfo::new(n_vocab, end);
    let mut ends = vec![end];
    let mut words = Vec::with_capacity(n_vocab as usize);
    for id in 0..n_vocab {
        let token = LlamaToken(id as i32);
        if vocab.is_eog(token) && id != end {
            ends.push(id);
        }
        let bytes = vocab.token_to_piece(token, false, None);
        if bytes.is_empty() {
            // Special tokens are marked so the grammar never produces them as text.
            let special = vocab.token_to_piece(token, true, None);
            if special.is_empty() {
                words.push(Vec::new());
            } else {
                let mut marked = Vec::with_capacity(special.len() + 1);
                marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                marked.extend(special);
                words.push(marked);
            }
        } else {
            words.push(bytes);
        }
    }
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
    let env: toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    ParserFactory::new_simple(&env).map_err(|e| format!("grammar engine: {e}"))
}

/// A matcher for one choice constrained to `schema` (with the engine's JSON options, not
/// the client's).
pub fn matcher(factory: &ParserFactory, schema: &serde_json::Value) -> Result<Matcher, String> {
    let grammar =
        TopLevelGrammar::from_json_schema(crate::engine::tools::with_json_options(schema));
    let parser = factory.create_parser(grammar).map_err(|e| e.to_string())?;
    Ok(Matcher::new(Ok(parser)))
}

/// A matcher for one choice constrained to a Lark grammar (llguidance's dialect).
pub fn lark_matcher(factory: &ParserFactory, lark: &str) -> Result<Matcher, String> {
    let grammar = TopLevelGrammar::from_lark(lark.to_string());
    let parser = factory.create_parser(grammar).map_err(|e| e.to_string())?;
    Ok(Matcher::new(Ok(parser)))
}
