//! Where a step's time goes: phase timings taken at marks in the training step and the corpus
//! encoding, each after a device sync. Only with the cargo feature `profile` (and only while
//! [`start`]ed); without it the marks compile to nothing. `examples/profile_gpu.rs` prints the
//! table. Syncing at every mark keeps burn's fusion from merging work across marks, so the
//! phases add up to a little more than an unmarked step.

#[cfg(feature = "profile")]
pub use on::{Phase, restart, start, stop, take};

#[cfg(feature = "profile")]
pub(crate) use on::mark;

/// Without the `profile` feature: nothing.
#[cfg(not(feature = "profile"))]
#[inline]
pub(crate) fn mark<B: burn::tensor::backend::Backend>(device: &B::Device, name: &'static str) {
    let _ = (device, name);
}

#[cfg(feature = "profile")]
mod on {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use burn::tensor::backend::Backend;

    static ON: AtomicBool = AtomicBool::new(false);

    /// The time spent in one phase, summed over its marks.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Phase {
        /// The phase, as its mark names it.
        pub name: &'static str,
        /// Time from the mark before to this phase's mark, summed.
        pub total: Duration,
        /// How many marks ended this phase.
        pub marks: u32,
    }

    /// Time per phase, in the order the phases were first seen, and the last mark.
    struct Phases {
        totals: Vec<Phase>,
        last: Option<Instant>,
    }

    static PHASES: Mutex<Phases> = Mutex::new(Phases {
        totals: Vec::new(),
        last: None,
    });

    fn phases() -> std::sync::MutexGuard<'static, Phases> {
        PHASES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts recording: the phases so far are dropped, and the first mark starts the clock.
    pub fn start() {
        let mut p = phases();
        p.totals.clear();
        p.last = None;
        ON.store(true, Ordering::Relaxed);
    }

    /// Stops recording (the phases stay until [`take`] or the next [`start`]).
    pub fn stop() {
        ON.store(false, Ordering::Relaxed);
    }

    /// The phases recorded since [`start`], in the order first seen, and clears them.
    pub fn take() -> Vec<Phase> {
        std::mem::take(&mut phases().totals)
    }

    /// Starts the clock at `device`'s next idle moment without charging any phase (before a
    /// step, so that the work queued before it is not counted).
    pub fn restart<B: Backend>(device: &B::Device) {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        let _ = B::sync(device);
        phases().last = Some(Instant::now());
    }

    /// Ends phase `name`: waits for `device`'s queued work, then adds the time since the
    /// previous mark to `name`. Does nothing unless recording.
    pub(crate) fn mark<B: Backend>(device: &B::Device, name: &'static str) {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        // A failed sync shows up as the same failure at the next read-back.
        let _ = B::sync(device);
        let now = Instant::now();
        let mut phases = phases();
        if let Some(last) = phases.last {
            let spent = now - last;
            match phases.totals.iter_mut().find(|p| p.name == name) {
                Some(phase) => {
                    phase.total += spent;
                    phase.marks += 1;
                }
                None => phases.totals.push(Phase {
                    name,
                    total: spent,
                    marks: 1,
                }),
            }
        }
        phases.last = Some(now);
    }
}
