//! tocsin's integration tests: the real engine, real plugins, real servers.
//!
//! - `validate`: `tocsin validate` on the shipped examples and on broken files.
//! - `backup_alerts`: backup-check → threshold → file sink, speaking once per change of state.
//! - `sandbox`: hostile plugins are stopped and reported while another pipeline delivers.
//! - `hot_reload`: adding, changing and deleting pipeline files while running.

mod backup_alerts;
mod hot_reload;
mod sandbox;
mod validate;
