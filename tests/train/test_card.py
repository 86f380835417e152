"""The exported model card states what happened: the base model's hub id and licence, the
steps, epochs and tokens actually trained."""

from __future__ import annotations

from huggingface_hub import metadata_load

from conftest_train import write_recipe
from ja_instruct.recipe import load_recipe
from ja_instruct.train import run_training
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.export import base_model_origin, model_card


def _meta(card: str, tmp_path) -> dict:
    (tmp_path / "README.md").write_text(card, encoding="utf-8")
    return metadata_load(tmp_path / "README.md")


def _cfg(model: str, **kw) -> TrainConfig:
    return TrainConfig(**{"model": model, "global_batch_size": 4, "micro_batch_size": 2, **kw})


def test_embedded_model_maps_to_its_hub_origin_and_licence(tmp_path):
    assert base_model_origin("embedded:smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    card = model_card(_cfg("embedded:smollm2-135m-instruct"), {})
    meta = _meta(card, tmp_path)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert "embedded:" not in meta["base_model"] and "licence apache-2.0" in card


def test_local_model_has_no_fake_hub_id_and_says_when_the_licence_is_unknown(tmp_path, tiny_model_dir):
    meta = _meta(model_card(_cfg(str(tiny_model_dir)), {}), tmp_path)
    assert "base_model" not in meta and meta["license"] == "other" and meta["license_name"] == "unknown"
    # a local folder whose own card names a licence (an earlier export, a downloaded model)
    local = tmp_path / "mine"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\n---\n# mine\n", encoding="utf-8")
    assert base_model_origin(str(local)) == (None, "mit")
    # a hub cache snapshot is its hub id
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert base_model_origin(str(snap))[0] == "org/name"


def test_hub_model_licence_comes_from_its_cached_card(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    snap = tmp_path / "models--pfnet--plamo-13b" / "snapshots" / "0c0c559"
    snap.mkdir(parents=True)
    (tmp_path / "models--pfnet--plamo-13b" / "refs").mkdir()
    (tmp_path / "models--pfnet--plamo-13b" / "refs" / "main").write_text("0c0c559")
    (snap / "README.md").write_text("---\nlicense: apache-2.0\n---\n# PLaMo-13B\n", encoding="utf-8")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    assert base_model_origin("pfnet/plamo-13b") == ("pfnet/plamo-13b", "apache-2.0")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert base_model_origin("pfnet/plamo-13b") == ("pfnet/plamo-13b", None)  # not cached: unknown, no download


def test_training_length_states_real_steps_epoch_fraction_and_tokens(tiny_model_dir):
    # max_steps 6 of 3 epochs x 39 steps: 6/39 = 0.154 epoch; 4 rows per step hold 4 x 400/154 =
    # 10.4 examples, 62 in all.
    trained = {"steps": 6, "steps_per_epoch": 39, "rows": 154, "examples": 400, "tokens": 15000,
               "supervised_tokens": 6208}
    card = model_card(_cfg(str(tiny_model_dir), epochs=3, max_steps=6), {"trained": trained,
                                                                         "supervised_tokens": 44000})
    assert ("| optimiser steps | 6 (`max_steps: 6` stopped the run; the configured 3 epoch(s) are 117 steps) |"
            in card)
    assert "| epochs trained | 0.154 (6 steps of 39 per epoch) |" in card
    assert "10.4 examples on average" in card
    assert "| examples seen | 62 (repeats counted; the training set holds 400) |" in card
    assert "| tokens trained | 15,000 (6,208 supervised) |" in card
    assert "| epochs (configured) | 3 |" in card and "| max steps | 6 |" in card
    assert "| supervised tokens per epoch | 44000 |" in card  # the dataset's, named as such
    # a full run does not claim a stop
    full = model_card(_cfg(str(tiny_model_dir), epochs=1), {"trained": {**trained, "steps": 39}})
    assert "| epochs trained | 1.000" in full and "stopped" not in full
    # without the loop's record the card says what it knows, and claims no epochs
    bare = model_card(_cfg(str(tiny_model_dir), epochs=1, max_steps=6), {"steps": 6})
    assert "steps taken: 6" in bare and "epochs trained" not in bare


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_card_states_the_training_data_checks(tiny_model_dir):
    from ja_instruct.data.card import describe_contamination

    cfg = _cfg(str(tiny_model_dir))
    hits = [{"benchmark": "rakuda", "question_id": q, "source": "s", "id": f"s:{i}", "split": "removed",
             "overlap": 0.8, "matched": "東京", "dropped": True} for i, q in enumerate(["3", "3", "9"])]
    stats = {"sources": {"s": {"license": "MIT", "sampled": 10}},
             "contamination": {"mode": "drop", "ngram": 20, "min_overlap": 0.5, "hits": hits,
                               "benchmarks": {"rakuda": {"spec": "r", "questions": 40, "found": 2,
                                                         "question_ids": ["3", "9"]}}},
             "near_dedup": {"threshold": 0.8, "ngram": 5, "num_perm": 128, "removed": 17},
             "quality": {"judge": {"backend": "fake", "model": "fake-judge"}, "prompt": "quality-ja@1",
                         "threshold": None, "top_fraction": 0.25, "scored": 40, "kept": 10, "dropped": 30,
                         "errors": 1}}
    checks = _section(model_card(cfg, {"stats": stats}), "Training data checks")
    assert ("- 2 of 40 rakuda questions found in the data: 0 in the training data, 2 only in examples removed "
            "before training (3 examples dropped as contaminated).") in checks
    for line in describe_contamination(stats):  # the dataset card's words, not a second wording
        assert f"- {line}" in checks
    assert "removed 17 conversation" in checks and "MinHash" in checks
    assert "kept 10 of 40 scored examples" in checks and "best 25% of each source" in checks
    # a dataset built without the checks says so; a dataset without stats.json claims nothing
    plain = _section(model_card(cfg, {"stats": {"sources": stats["sources"]}}), "Training data checks")
    assert "Not checked for benchmark contamination (data.contamination is null)." in plain
    assert "Near-duplicate" not in plain and "Judge-scored" not in plain
    assert "unknown" in _section(model_card(cfg, {}), "Training data checks")


def test_card_of_a_tiny_run_has_a_licence_and_its_real_steps(tmp_path, tiny_model_dir, toy_dataset_dir):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_steps=2)
    final = run_training(load_recipe(path))
    card = (final / "README.md").read_text(encoding="utf-8")
    meta = metadata_load(final / "README.md")
    assert meta["license"] == "other" and meta["license_name"] == "unknown" and "base_model" not in meta
    assert "## Training length" in card and "| max steps | 2 |" in card
    assert "| optimiser steps | 2 (`max_steps: 2` stopped the run" in card and "| epochs trained | " in card
    assert "- Not checked for benchmark contamination (data.contamination is null)." in card  # its stats.json
