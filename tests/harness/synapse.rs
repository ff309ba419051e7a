//! Synapse: next.
