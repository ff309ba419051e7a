//! The queue store on a real NATS JetStream (Debian `nats-server`): the backend contract every
//! store passes (`tocsin_queue::contract`, which the sled store's tests run too), on one
//! server and on a cluster of three with three replicas; what the JetStream store adds:
//! de-duplication of a client's retry by message id, byte counts that a fresh reading agrees
//! with, one delivering process per namespace (a lease) while others take ingest, and queues that outlive a lost server of the
//! cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tocsin_queue::contract::{self, msg, state};
use tocsin_queue::{HandOver, JetStreamOptions, JetStreamStore, QueueStore};
use tocsin_tests::nats::Nats;

/// Options for a store in a namespace no other test uses, on `nats`.
fn options(nats: &Nats, replicas: usize) -> JetStreamOptions {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut options = JetStreamOptions::new(vec![nats.urls()]);
    options.replicas = replicas;
    options.namespace = format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    options
}

/// A store on `nats`, connected from a plain thread (as the server's start-up does).
fn store(options: &JetStreamOptions) -> JetStreamStore {
    let options = options.clone();
    std::thread::spawn(move || JetStreamStore::connect(options).unwrap())
        .join()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_contract_holds_on_one_server() {
    let nats = Nats::single().await;
    let fresh = || store(&options(&nats, 1));
    contract::ingress_is_fifo_and_hand_over_moves_atomically(&fresh()).await;
    contract::a_run_of_hand_overs_is_one_ordered_batch(&fresh()).await;
    contract::part_of_an_append_can_be_handed_over_retried_and_dead_lettered(&fresh()).await;
    contract::sink_queues_keep_order_across_sinks_and_acks(&fresh()).await;
    contract::dead_letters_can_be_listed_replayed_and_purged(&fresh()).await;
    contract::filter_failures_dead_letter_from_ingress(&fresh()).await;
    contract::purging_a_pipeline_removes_its_queues(&fresh()).await;
    contract::state_is_scanned_by_stage_and_server_state_by_prefix(&fresh()).await;
    let reopened = options(&nats, 1);
    let first = store(&reopened);
    contract::everything_survives_reopen(Arc::new(first), move || Arc::new(store(&reopened))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_is_stored_once_and_counts_agree_with_a_fresh_reading() {
    let nats = Nats::single().await;
    let opts = options(&nats, 1);
    let q = store(&opts);
    q.append_ingress("p", &[msg("a"), msg("b")], &[state("source", "n", b"1")])
        .await
        .unwrap();
    // A client that did not see the 202 posts the same messages again.
    q.append_ingress("p", &[msg("a"), msg("b")], &[])
        .await
        .unwrap();
    assert_eq!(q.depths("p").unwrap().ingress, 2);
    let heads = q.ingress_heads("p", 10).unwrap();
    q.hand_over(
        "p",
        HandOver {
            ingress: heads[0].0,
            outputs: vec![("s".into(), vec![heads[0].1.clone()])],
            state: vec![state("filter.0", "k", b"v")],
        },
    )
    .await
    .unwrap();
    let (seq, mut failed) = q.sink_head("p", "s").unwrap().unwrap();
    failed.attempts = 1;
    failed.last_error = Some("HTTP 503".into());
    q.record_failure("p", "s", seq, &failed).unwrap();
    failed.attempts = 2;
    q.record_failure("p", "s", seq, &failed).unwrap();
    q.dead_letter("p", "s", seq, &failed).await.unwrap();
    let (bytes, depths) = (q.stored_bytes("p").unwrap(), q.depths("p").unwrap());
    drop(q);
    let again = store(&opts);
    assert_eq!(
        again.stored_bytes("p").unwrap(),
        bytes,
        "a fresh reading of the stream and bucket counts what the writer counted"
    );
    assert_eq!(again.depths("p").unwrap(), depths);
    assert_eq!(again.dead_letters("p", "s").unwrap()[0].1.attempts, 2);
    assert_eq!(
        again.state_get("p", "filter.0", "k").unwrap().unwrap(),
        b"v"
    );
}

/// Hands ingress entry `seq` over to sink `s` of pipeline `p`, unchanged.
async fn to_sink(q: &JetStreamStore, seq: tocsin_queue::Seq, entry: tocsin_queue::Envelope) {
    let hand_over = HandOver {
        ingress: seq,
        outputs: vec![("s".into(), vec![entry])],
        state: vec![],
    };
    q.hand_over("p", hand_over).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_takes_ingest_the_first_delivers_and_takes_over_at_its_stop() {
    let nats = Nats::single().await;
    let opts = options(&nats, 1);
    let first = store(&opts);
    first.append_ingress("p", &[msg("a")], &[]).await.unwrap();
    let second = store(&opts);
    assert!(*first.delivers().borrow());
    assert!(!*second.delivers().borrow(), "one process delivers");
    let named = second.delivered_by().unwrap();
    assert!(
        named.contains(&format!("pid {}", std::process::id())),
        "{named}"
    );
    // The second takes ingest; the first's index follows it, and its filters are woken.
    let woken = Arc::new(tokio::sync::Notify::new());
    first.watch_ingress("p", woken.clone());
    second
        .append_ingress("p", &[msg("b"), msg("c")], &[])
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), woken.notified())
        .await
        .expect("the delivering process is woken by another's append");
    let ids = |q: &JetStreamStore| -> Vec<String> {
        q.ingress_heads("p", 10)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.message.id)
            .collect()
    };
    tocsin_tests::wait_until(
        std::time::Duration::from_secs(10),
        "all three listed",
        || ids(&first).len() == 3,
    )
    .await;
    assert_eq!(
        ids(&first),
        ["a", "b", "c"],
        "in the order they were appended"
    );
    assert_eq!(
        second.depths("p").unwrap().ingress,
        3,
        "counted by JetStream"
    );
    // An entry handed over leaves for good: the tail does not bring it back.
    let (seq, head) = first.ingress_head("p").unwrap().unwrap();
    to_sink(&first, seq, head).await;
    first.append_ingress("p", &[msg("d")], &[]).await.unwrap();
    let (seq, head) = first.ingress_heads("p", 10).unwrap().pop().unwrap();
    assert_eq!(head.message.id, "d");
    to_sink(&first, seq, head).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(ids(&first), ["b", "c"]);
    // What moves entries is the delivering process's to do.
    assert!(matches!(
        second.ingress_heads("p", 1),
        Err(tocsin_queue::QueueError::NotDelivering { .. })
    ));
    // A clean stop gives the lease back: the second takes over within seconds and reads
    // the queues as the first left them.
    let mut delivers = second.delivers();
    drop(first);
    tokio::time::timeout(tocsin_queue::jetstream::lease::TTL, delivers.changed())
        .await
        .expect("the second takes over before a lost holder's lease would lapse")
        .unwrap();
    assert!(*delivers.borrow());
    assert!(second.delivered_by().is_none());
    assert_eq!(ids(&second), ["b", "c"]);
    assert_eq!(second.depths("p").unwrap().sinks, [("s".to_string(), 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_queues_outlive_a_killed_server() {
    let mut nats = Nats::cluster().await;
    let fresh = || store(&options(&nats, 3));
    contract::ingress_is_fifo_and_hand_over_moves_atomically(&fresh()).await;
    contract::dead_letters_can_be_listed_replayed_and_purged(&fresh()).await;
    let opts = options(&nats, 3);
    let q = store(&opts);
    let ids: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for id in &ids {
        q.append_ingress("p", &[msg(id)], &[]).await.unwrap();
    }
    drop(q);
    nats.kill(0);
    // Two of three hold a quorum: the queue reads and takes writes.
    let q = store(&opts);
    let heads: Vec<String> = q
        .ingress_heads("p", 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.message.id)
        .collect();
    assert_eq!(heads, ids);
    q.append_ingress("p", &[msg("after")], &[]).await.unwrap();
    assert_eq!(q.depths("p").unwrap().ingress, 51);
}
