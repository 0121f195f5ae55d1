//! The resumable JSONL writer: commit, crash, reopen, continue, finalize; on a local directory
//! and on an object store.

use std::sync::Arc;

use llamaduo::api::{DatasetRow, RowSource};
use llamaduo_store::{JsonlParts, Store, StoreError, TailPolicy, read_jsonl, write_jsonl};
use object_store::memory::InMemory;

fn row(i: usize) -> DatasetRow {
    let mut r = DatasetRow::single_turn(
        format!("question {i}\nwith a newline"),
        format!("answer {i}"),
    );
    r.id = Some(format!("s-{i}"));
    r.source = Some(RowSource::Synthetic);
    r.seed_id = Some(format!("c-{}", i % 3));
    r
}

const FINAL: &str = "round-1/synthetic.jsonl";

async fn crash_and_resume(store: &Store) {
    // First run: two batches committed, then the process dies (the writer is dropped).
    {
        let mut w = JsonlParts::open(store, FINAL).await.unwrap();
        assert_eq!(w.part_count(), 0);
        assert!(!w.is_finalized());
        let k = w.commit(&[row(0), row(1)]).await.unwrap();
        assert_eq!(
            k.as_deref(),
            Some("round-1/synthetic.parts/part-00000.jsonl")
        );
        assert_eq!(w.commit::<DatasetRow>(&[]).await.unwrap(), None);
        w.commit(&[row(2)]).await.unwrap();
    }
    // Second run: sees exactly what was committed, continues numbering after it.
    let mut w = JsonlParts::open(store, FINAL).await.unwrap();
    assert_eq!(w.part_count(), 2);
    let done: Vec<DatasetRow> = w.read_rows().await.unwrap();
    assert_eq!(done, vec![row(0), row(1), row(2)]);
    // The stage skips what is done and commits the rest.
    let todo: Vec<DatasetRow> = (0..5).map(row).filter(|r| !done.contains(r)).collect();
    let k = w.commit(&todo).await.unwrap();
    assert_eq!(
        k.as_deref(),
        Some("round-1/synthetic.parts/part-00002.jsonl")
    );
    assert!(!store.exists(FINAL).await.unwrap());

    assert_eq!(w.finalize().await.unwrap(), 5);
    assert!(w.is_finalized());
    let rows: Vec<DatasetRow> = read_jsonl(store, FINAL).await.unwrap();
    assert_eq!(rows, (0..5).map(row).collect::<Vec<_>>());
    assert!(
        store
            .list("round-1/synthetic.parts")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(w.read_rows::<DatasetRow>().await.unwrap().len(), 5);

    // Finalized: idempotent, closed to new rows, and a reopen knows it.
    assert_eq!(w.finalize().await.unwrap(), 5);
    let e = w.commit(&[row(9)]).await.unwrap_err();
    assert!(e.to_string().contains("already finalized"), "{e}");
    let again = JsonlParts::open(store, FINAL).await.unwrap();
    assert!(again.is_finalized());
    assert_eq!(again.read_rows::<DatasetRow>().await.unwrap().len(), 5);
}

#[tokio::test]
async fn local_parts_survive_a_crash_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    crash_and_resume(&Store::local(dir.path())).await;
}

#[tokio::test]
async fn object_store_parts_survive_a_crash_without_duplicates() {
    let store =
        Store::from_object_store(Arc::new(InMemory::new()), "ns/m", "memory:///ns/m").unwrap();
    crash_and_resume(&store).await;
}

#[tokio::test]
async fn a_write_killed_mid_part_is_invisible_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());
    let mut w = JsonlParts::open(&store, FINAL).await.unwrap();
    w.commit(&[row(0)]).await.unwrap();
    drop(w);
    // A process killed while writing part 1 leaves its temp file with a torn line.
    let parts = dir.path().join("round-1/synthetic.parts");
    std::fs::write(
        parts.join(".part-00001.jsonl.llamaduo-tmp.4242.0"),
        "{\"messages\":[{\"ro",
    )
    .unwrap();
    let mut w = JsonlParts::open(&store, FINAL).await.unwrap();
    assert_eq!(w.part_count(), 1);
    assert_eq!(w.read_rows::<DatasetRow>().await.unwrap(), vec![row(0)]);
    w.commit(&[row(1)]).await.unwrap();
    assert!(parts.join("part-00001.jsonl").is_file());
    assert_eq!(w.finalize().await.unwrap(), 2);
}

#[tokio::test]
async fn a_crash_between_final_write_and_cleanup_is_finished_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());
    let mut w = JsonlParts::open(&store, FINAL).await.unwrap();
    w.commit(&[row(0), row(1)]).await.unwrap();
    // The final file was written, then the process died before deleting the parts.
    write_jsonl(&store, FINAL, &[row(0), row(1)]).await.unwrap();
    let mut w = JsonlParts::open(&store, FINAL).await.unwrap();
    assert!(w.is_finalized());
    // Rows come from the final file only: the leftover part is not counted twice.
    assert_eq!(w.read_rows::<DatasetRow>().await.unwrap().len(), 2);
    assert_eq!(w.finalize().await.unwrap(), 2);
    assert!(
        store
            .list("round-1/synthetic.parts")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn damaged_parts_and_strangers_are_errors_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());
    let mut w = JsonlParts::open(&store, FINAL).await.unwrap();
    w.commit(&[row(0), row(1)]).await.unwrap();
    // Someone edits a committed part by hand and breaks line 2.
    let part = dir.path().join("round-1/synthetic.parts/part-00000.jsonl");
    let text = std::fs::read_to_string(&part).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&part, format!("{first}\n{{\"messages\": oops}}\n")).unwrap();
    let e = w.read_rows::<DatasetRow>().await.unwrap_err();
    assert!(matches!(e, StoreError::JsonlLine { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("part-00000.jsonl line 2"), "{e}");
    assert!(w.finalize().await.is_err());
    assert!(
        !store.exists(FINAL).await.unwrap(),
        "a damaged part must not be finalized"
    );

    std::fs::write(dir.path().join("round-1/synthetic.parts/notes.txt"), "hi").unwrap();
    let e = JsonlParts::open(&store, FINAL).await.unwrap_err();
    assert!(e.to_string().contains("notes.txt"), "{e}");

    let e = JsonlParts::open(&store, "round-1/synthetic.json")
        .await
        .unwrap_err();
    assert!(e.to_string().contains(".jsonl"), "{e}");
}

#[tokio::test]
async fn reading_foreign_files_reports_a_truncated_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path());
    let good = serde_json::to_string(&row(0)).unwrap();
    // An uploaded coverage file whose writer was interrupted mid-append.
    store
        .put(
            "coverage/train.jsonl",
            format!("{good}\n{good}\n{{\"messages\":[{{\"role\""),
        )
        .await
        .unwrap();
    let e = read_jsonl::<DatasetRow>(&store, "coverage/train.jsonl")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("coverage/train.jsonl line 3"), "{e}");
    let lenient = llamaduo_store::read_jsonl_with::<DatasetRow>(
        &store,
        "coverage/train.jsonl",
        TailPolicy::ReportTruncatedTail,
    )
    .await
    .unwrap();
    assert_eq!(lenient.rows.len(), 2);
    let tail = lenient.truncated_tail.unwrap();
    assert_eq!(tail.line, 3);
    assert!(tail.url.ends_with("coverage/train.jsonl"), "{}", tail.url);
}
