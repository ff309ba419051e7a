//! Ingest load: clients posting JSON messages with unique ids to one ingest URL until
//! stopped, keeping a ledger of the ids acknowledged with 202 (the ones tocsin promised).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeSet<String>>,
    /// Answers by status (0: no answer — refused, reset, timed out).
    answers: Mutex<BTreeMap<u16, u64>>,
}

/// Running producers.
pub struct Load {
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the producers saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Ids answered with 202.
    pub acked: BTreeSet<String>,
    /// Answers by status (0: no answer).
    pub answers: BTreeMap<u16, u64>,
}

impl Outcome {
    /// Requests sent.
    pub fn requests(&self) -> u64 {
        self.answers.values().sum()
    }
}

impl Load {
    /// Starts `producers` clients posting to `url`, each pausing `pace` after a 202: mostly
    /// single messages, every fourth request a batch of three. Ids are `<tag>w<producer>-<n>-<i>`.
    pub fn start(url: &str, tag: &str, producers: usize, pace: Duration) -> Load {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..producers)
            .map(|w| {
                let (url, ledger, stop) = (url.to_string(), ledger.clone(), stop.clone());
                let prefix = format!("{tag}w{w}");
                tokio::spawn(produce(prefix, url, ledger, stop, pace))
            })
            .collect();
        Load {
            ledger,
            stop,
            tasks,
        }
    }

    /// Ids acknowledged so far.
    pub fn acked(&self) -> BTreeSet<String> {
        self.ledger.acked.lock().unwrap().clone()
    }

    /// Stops the producers and returns what they saw.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("producer");
        }
        Outcome {
            acked: self.ledger.acked.lock().unwrap().clone(),
            answers: self.ledger.answers.lock().unwrap().clone(),
        }
    }
}

async fn produce(
    prefix: String,
    url: String,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    pace: Duration,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let batch = if n.is_multiple_of(4) { 3 } else { 1 };
        let ids: Vec<String> = (0..batch).map(|j| format!("{prefix}-{n}-{j}")).collect();
        let messages: Vec<_> = ids
            .iter()
            .map(|id| json!({ "id": id, "body": "load" }))
            .collect();
        let body = if batch == 1 {
            messages[0].clone()
        } else {
            json!(messages)
        };
        let status = match client.post(&url).json(&body).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        *ledger.answers.lock().unwrap().entry(status).or_default() += 1;
        if status == 202 {
            ledger.acked.lock().unwrap().extend(ids);
            tokio::time::sleep(pace).await;
        } else {
            // Refused, reset, 404 or 503 while tocsin restarts or reloads: not promised.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
