"""Staging shards mix the corpus: documents read in source order must not stay in source order."""

from __future__ import annotations

from lightning_llm.data.shards import ShardWriter, read_shard


def test_every_shard_mixes_documents_from_across_the_corpus(tmp_path):
    # 200 "A" documents, then 200 "B" documents: the order a source yields, e.g. all plays, then the Bible
    docs = [f"A{i} " * 50 for i in range(200)] + [f"B{i} " * 50 for i in range(200)]
    w = ShardWriter(tmp_path, "train", max_bytes=1_000_000, buckets=4, seed=1)
    for d in docs:
        w.write(d)
    w.close()
    assert w.documents == 400 and len(w.paths) == 4
    seen = []
    for p in w.paths:
        texts = list(read_shard(p))
        seen.extend(texts)
        n_a = sum(t[0] == "A" for t in texts)
        assert 0.3 < n_a / len(texts) < 0.7, (p, n_a, len(texts))  # about half of each kind
    assert sorted(seen) == sorted(docs)  # nothing lost or duplicated


def test_pop_last_removes_exactly_the_last_document(tmp_path):
    w = ShardWriter(tmp_path, "val", max_bytes=1_000_000, buckets=3, seed=0)
    for i in range(10):
        w.write(f"doc {i}")
    assert w.pop_last() == "doc 9"
    w.close()
    texts = sorted(t for p in w.paths for t in read_shard(p))
    assert texts == sorted(f"doc {i}" for i in range(9)) and w.documents == 9
