//! Running a model's forward passes on a thread that ends when the model goes idle.
//!
//! llama.cpp is built with OpenMP (docs/BENCHMARKS.md, "Several models in one process"):
//! every thread that runs a forward pass becomes the master of an OpenMP team of its
//! own, and the team lives as long as that thread. Once a process holds more OpenMP
//! threads than the machine has cores, libgomp stops spinning between a pass's many
//! small operations and sleeps instead, and a model decodes up to twice as slowly — even
//! when every other model sits idle. So a model's worker keeps its context on a
//! long-lived thread that only waits for work, and runs each busy period (from a request
//! arriving to the last one finishing, and 250 ms more in case another comes) on a fresh
//! thread: when that thread ends, libgomp releases its team, and an idle model holds no
//! OpenMP threads. A fresh thread and team made the first forward pass of a busy period
//! ~2.5 ms slower, which the 250 ms spare a client that sends its next request at once.

/// Runs `work` on a new thread named like this one and waits for it to end; on this
/// thread when no thread can be started. A panic of `work` continues on this thread.
///
/// # Safety
///
/// `work` is moved to another thread although its type may not be `Send` (llama.cpp's
/// contexts and batches are raw pointers): it must not hold anything tied to the calling
/// thread (thread-local data, lock guards). The calling thread does nothing until `work`
/// has ended, so nothing it captures is used by two threads at once, and the end of the
/// thread is synchronised with the caller by `join`.
pub(super) unsafe fn on_fresh_thread<R: Send>(work: impl FnOnce() -> R) -> R {
    /// The captured work, declared sendable under the contract above.
    struct AssertSend<T>(T);
    // SAFETY: see `on_fresh_thread`'s contract: one thread at a time, none thread-bound.
    unsafe impl<T> Send for AssertSend<T> {}
    impl<T> AssertSend<T> {
        /// The value (a method, so that a closure captures the whole wrapper).
        fn into_inner(self) -> T {
            self.0
        }
    }

    let mut slot = Some(work);
    let taken = AssertSend(&mut slot);
    let mut builder = std::thread::Builder::new();
    if let Some(name) = std::thread::current().name() {
        builder = builder.name(name.to_owned());
    }
    let ran = std::thread::scope(|scope| {
        let spawned = builder.spawn_scoped(scope, move || {
            let slot = taken.into_inner();
            slot.take().map(|work| work())
        });
        spawned.map(|handle| handle.join())
    });
    match ran {
        Ok(Ok(Some(result))) => result,
        Ok(Ok(None)) => unreachable!("the work is taken only by the thread that runs it"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a thread for llama.cpp; running on the worker's own");
            match slot.take() {
                Some(work) => work(),
                None => unreachable!("a thread that did not start took nothing"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::on_fresh_thread;

    #[test]
    fn the_work_runs_on_another_thread_that_ends_and_gives_back_its_result() {
        let here = std::thread::current().id();
        // Not `Send`: an `Rc` borrowed from this thread, which waits meanwhile.
        let counter = Rc::new(Cell::new(1));
        // SAFETY: nothing captured is tied to this thread; it waits for the work.
        let (there, value) = unsafe {
            on_fresh_thread(|| {
                counter.set(counter.get() + 1);
                (std::thread::current().id(), counter.get())
            })
        };
        assert_ne!(there, here);
        assert_eq!(value, 2);
        assert_eq!(counter.get(), 2);
    }

    #[test]
    fn a_panic_in_the_work_continues_on_the_caller() {
        // SAFETY: nothing is captured.
        let caught = std::panic::catch_unwind(|| unsafe {
            on_fresh_thread(|| -> u8 { panic!("the forward pass crashed") })
        });
        assert!(caught.is_err());
    }
}
