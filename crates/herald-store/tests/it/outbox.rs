#![allow(clippy::unwrap_used)]

//! Conformance cases for the outbox: enqueue, claim with a lease, complete, fail, dead
//! events and their retry, statistics, cleanup, enrichment lookups.

use herald_store::{Failure, NewOutboxEvent, Store};

fn event(id: &str, recipient: &str, at: i64) -> NewOutboxEvent {
    NewOutboxEvent {
        event_id: id.into(),
        recipient: recipient.into(),
        kind: "TIP".into(),
        data: r#"{"amount":5}"#.into(),
        created_at: at,
    }
}

pub async fn outbox_events_are_enqueued_once_and_claimed_oldest_first_under_a_lease(store: &dyn Store) {
    let outbox = store.outbox();
    assert!(outbox.enqueue(event("e1", "user:alice", 1_000)).await.unwrap());
    assert!(outbox.enqueue(event("e2", "channel:c1", 1_001)).await.unwrap());
    assert!(outbox.enqueue(event("e3", "global", 5_000)).await.unwrap());
    assert!(!outbox.enqueue(event("e1", "user:bob", 1_002)).await.unwrap(), "same event id enqueued once");

    // Due at 2,000: e1 and e2 (e3 is due at its creation, 5,000).
    let claimed = outbox.claim(10, 2_000, 32_000).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert_eq!(claimed[0].recipient, "user:alice", "the first enqueue's recipient kept");
    assert_eq!(claimed[0].data, r#"{"amount":5}"#);
    assert!(claimed.iter().all(|e| e.attempts == 1 && e.next_attempt_at == 32_000));
    // Leased: nobody else gets them before 32,000; e3 is due by then.
    let again = outbox.claim(10, 6_000, 36_000).await.unwrap();
    assert_eq!(again.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), ["e3"]);
    // The lease ran out (the worker died): claimed again, a second attempt.
    let retaken = outbox.claim(1, 40_000, 70_000).await.unwrap();
    assert_eq!((retaken[0].event_id.as_str(), retaken[0].attempts), ("e1", 2));

    outbox.complete(&[claimed[0].id, claimed[1].id], 41_000).await.unwrap();
    let done = outbox.event("e1").await.unwrap().unwrap();
    assert_eq!(done.processed_at, Some(41_000));
    assert!(outbox.claim(10, 100_000, 130_000).await.unwrap().iter().all(|e| e.event_id == "e3"));
    assert_eq!(outbox.event("missing").await.unwrap(), None);
}

pub async fn failed_outbox_events_are_retried_then_dead_until_retried_by_hand(store: &dyn Store) {
    let outbox = store.outbox();
    outbox.enqueue(event("f1", "user:alice", 1_000)).await.unwrap();
    let first = outbox.claim(10, 1_000, 31_000).await.unwrap().remove(0);
    outbox.fail(first.id, "user 7 not found", Failure::RetryAt(3_000), 1_500).await.unwrap();
    let failed = outbox.event("f1").await.unwrap().unwrap();
    assert_eq!((failed.next_attempt_at, failed.last_error.as_deref()), (3_000, Some("user 7 not found")));
    assert!(outbox.claim(10, 2_999, 40_000).await.unwrap().is_empty(), "not before its retry time");
    let second = outbox.claim(10, 3_000, 33_000).await.unwrap().remove(0);
    assert_eq!(second.attempts, 2);
    outbox.fail(second.id, "still missing", Failure::Dead, 3_500).await.unwrap();
    assert!(outbox.claim(10, 1_000_000, 1_030_000).await.unwrap().is_empty(), "dead events are not claimed");

    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 1));
    let dead = outbox.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].dead_at, dead[0].last_error.as_deref()), (Some(3_500), Some("still missing")));

    assert!(!outbox.retry("missing", 4_000).await.unwrap());
    assert!(outbox.retry("f1", 4_000).await.unwrap());
    assert!(!outbox.retry("f1", 4_000).await.unwrap(), "no longer dead");
    let fresh = outbox.claim(10, 4_000, 34_000).await.unwrap();
    assert_eq!((fresh[0].event_id.as_str(), fresh[0].attempts), ("f1", 1), "attempts start over");
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.oldest_pending_at), (1, 0, Some(1_000)));
}

pub async fn processed_outbox_events_are_purged_in_batches(store: &dyn Store) {
    let outbox = store.outbox();
    for i in 0..5 {
        outbox.enqueue(event(&format!("p{i}"), "user:alice", 1_000 + i)).await.unwrap();
    }
    outbox.enqueue(event("pending", "user:alice", 2_000)).await.unwrap();
    let claimed = outbox.claim(5, 1_999, 30_000).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    outbox.complete(&ids[..3], 10_000).await.unwrap();
    outbox.complete(&ids[3..], 20_000).await.unwrap();
    assert_eq!(outbox.purge_processed(15_000, 2).await.unwrap(), 2, "at most the batch");
    assert_eq!(outbox.purge_processed(15_000, 2).await.unwrap(), 1, "only those processed before");
    assert_eq!(outbox.purge_processed(15_000, 2).await.unwrap(), 0);
    assert!(outbox.event("p3").await.unwrap().is_some(), "processed later: kept");
    assert!(outbox.event("pending").await.unwrap().is_some(), "never processed: kept");
}

pub async fn enrichment_lookups_return_the_first_row_as_text(store: &dyn Store) {
    let outbox = store.outbox();
    let row = outbox.lookup("SELECT 'Ada' AS name, CAST(NULL AS TEXT) AS image WHERE $1 = '7'", "7").await.unwrap();
    assert_eq!(row, Some(vec![("name".to_owned(), Some("Ada".to_owned())), ("image".to_owned(), None)]));
    let none = outbox.lookup("SELECT 'Ada' AS name WHERE $1 = '7'", "8").await.unwrap();
    assert_eq!(none, None);
    assert!(outbox.lookup("SELECT name FROM no_such_table WHERE id = $1", "7").await.is_err());
    assert!(outbox.lookup("SELECT 42 AS n WHERE $1 = '7'", "7").await.is_err(), "non-text column is an error");
}
