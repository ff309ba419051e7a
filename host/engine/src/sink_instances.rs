//! A sink's plugin instances: one to start with, more — up to its `concurrency` — only when its
//! queue has work for them, each under the plugin memory budget.
//!
//! So the default `concurrency = 8` costs one instance (and one instance's memory cap) for a
//! quiet sink, and a storm gets its eight while the budget has room for them. When it has not,
//! the sink delivers on the instances it has, and says so once.

use tocsin_runtime::Stage;

use crate::plugin_memory::Reservation;

/// The instances of one sink; [`SinkInstances::take`] one per delivery, put it back after.
pub struct SinkInstances {
    idle: Vec<Stage>,
    /// Instances made so far (idle or in a delivery).
    made: usize,
    /// Instances it may make: the sink's `concurrency`, lowered to what it has when the
    /// memory budget refuses one more.
    most: usize,
    /// What each further instance is made from (a sibling of the first, never called).
    template: Stage,
    memory: Reservation,
}

impl SinkInstances {
    /// A sink's instances, starting with `first` (already started), growing up to
    /// `concurrency` (at least 1) while `memory` can grow by one instance's memory cap.
    pub fn new(first: Stage, concurrency: usize, memory: Reservation) -> Self {
        SinkInstances {
            template: first.sibling(),
            idle: vec![first],
            made: 1,
            most: concurrency.max(1),
            memory,
        }
    }

    /// How many deliveries could start now: the idle instances and those it may still make.
    pub fn free(&self) -> usize {
        self.idle.len() + (self.most - self.made)
    }

    /// An instance for one delivery: an idle one, else a new one if `concurrency` and the
    /// memory budget allow; `None` when neither does.
    pub fn take(&mut self) -> Option<Stage> {
        if let Some(stage) = self.idle.pop() {
            return Some(stage);
        }
        if self.made >= self.most {
            return None;
        }
        if !self.memory.grow(self.template.context().limits.memory) {
            let ctx = self.template.context();
            tracing::warn!(
                pipeline = %ctx.pipeline,
                stage = %ctx.stage,
                "delivering on {} of {} instances: the plugin memory budget \
                 (--max-plugin-memory) has no room for another {} MiB",
                self.made,
                self.most,
                ctx.limits.memory >> 20
            );
            self.most = self.made;
            return None;
        }
        self.made += 1;
        Some(self.template.sibling())
    }

    /// Returns an instance after its delivery.
    pub fn put_back(&mut self, stage: Stage) {
        self.idle.push(stage);
    }
}
