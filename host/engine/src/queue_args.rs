//! `tocsin run`'s choice of queue store: sled in the data directory (the default), or NATS
//! JetStream (`--queue nats://…`) with its credentials.

use std::path::{Path, PathBuf};

use tocsin::settings::QueueBackend;
use tocsin_queue::JetStreamOptions;

/// Where the queues are kept.
#[derive(clap::Args, Clone, Debug)]
pub struct QueueArgs {
    /// Keep the queues in NATS JetStream instead of the data directory: the servers' URLs,
    /// comma-separated (`nats://n1:4222,nats://n2:4222`). Without it, sled in --data. Every
    /// tocsin process on the same namespace takes ingest; one of them delivers, and another
    /// takes over within seconds when it is lost.
    #[arg(long = "queue", env = "TOCSIN_QUEUE", value_name = "URLS")]
    queue: Option<String>,
    /// JetStream: a token for the servers' `authorization { token }`, as `env:NAME` or
    /// `file:/path`.
    #[arg(long, env = "TOCSIN_QUEUE_TOKEN", value_name = "SECRET")]
    queue_token: Option<String>,
    /// JetStream: a user name (with --queue-password).
    #[arg(long, env = "TOCSIN_QUEUE_USER", requires = "queue_password")]
    queue_user: Option<String>,
    /// JetStream: the user's password, as `env:NAME` or `file:/path`.
    #[arg(
        long,
        env = "TOCSIN_QUEUE_PASSWORD",
        value_name = "SECRET",
        requires = "queue_user"
    )]
    queue_password: Option<String>,
    /// JetStream: a credentials file (`.creds`: a user JWT and its NKey seed).
    #[arg(long, env = "TOCSIN_QUEUE_CREDS", value_name = "FILE")]
    queue_creds: Option<PathBuf>,
    /// JetStream: a CA certificate (PEM) to trust; TLS is then required.
    #[arg(long, env = "TOCSIN_QUEUE_CA", value_name = "FILE")]
    queue_ca: Option<PathBuf>,
    /// JetStream: copies of each stream: 1 on one server, 3 in a cluster of three or more.
    #[arg(long, env = "TOCSIN_QUEUE_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    queue_replicas: u8,
    /// JetStream: the prefix of tocsin's streams, buckets and subjects; deployments that
    /// share servers keep apart by it.
    #[arg(long, env = "TOCSIN_QUEUE_NAMESPACE", default_value = "tocsin")]
    queue_namespace: String,
}

impl QueueArgs {
    /// The backend these arguments choose; an error names the argument at fault.
    pub fn backend(&self) -> anyhow::Result<QueueBackend> {
        let Some(servers) = &self.queue else {
            let jetstream_only = [
                ("--queue-token", self.queue_token.is_some()),
                ("--queue-user", self.queue_user.is_some()),
                ("--queue-creds", self.queue_creds.is_some()),
                ("--queue-ca", self.queue_ca.is_some()),
            ];
            if let Some((arg, _)) = jetstream_only.iter().find(|(_, set)| *set) {
                anyhow::bail!("{arg} is for JetStream: give --queue nats://… as well");
            }
            return Ok(QueueBackend::Sled);
        };
        let servers: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if servers.is_empty() {
            anyhow::bail!("--queue: give one or more nats://host:port URLs");
        }
        let secret = |arg: &str, text: &str| -> anyhow::Result<String> {
            tocsin_config::SecretRef::parse(text, Path::new("."))
                .and_then(|s| s.resolve())
                .map(|s| s.trim().to_string())
                .map_err(|e| anyhow::anyhow!("{arg}: {e}"))
        };
        let mut options = JetStreamOptions::new(servers);
        options.token = self
            .queue_token
            .as_deref()
            .map(|t| secret("--queue-token", t))
            .transpose()?;
        if let (Some(user), Some(password)) = (&self.queue_user, &self.queue_password) {
            options.user_password = Some((user.clone(), secret("--queue-password", password)?));
        }
        options.credentials_file = self.queue_creds.clone();
        options.ca_file = self.queue_ca.clone();
        options.replicas = usize::from(self.queue_replicas);
        options.namespace = self.queue_namespace.clone();
        Ok(QueueBackend::JetStream(options))
    }
}
