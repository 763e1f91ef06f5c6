//! The `.sched` schedule language.
