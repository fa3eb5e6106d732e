"""How the pipeline reads what a deployment's run returned (JSON only, never a pickle) and
when it warns that a stage's output is too small for what follows."""

from __future__ import annotations

import json
import pickle

import pytest

from flows.lineage import lineage_markdown, too_small
from flows.pipeline import read_json_result
from lm.data.stage_io import write_signed_json


class _Trap:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _state(tmp_path, serializer: str, payload: bytes, record_serializer: str | None = None):
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.serializers import Serializer
    from prefect.states import Completed

    path = tmp_path / "result-record"
    record = {
        "metadata": {"storage_key": str(path), "serializer": {"type": record_serializer or serializer}},
        "result": payload.decode("latin-1"),
    }
    path.write_text(json.dumps(record))
    meta = ResultRecordMetadata(storage_key=str(path), serializer=Serializer(type=serializer))
    return Completed(data=meta)


def test_a_json_result_record_is_read_as_plain_json(tmp_path):
    state = _state(tmp_path, "json", json.dumps("/out/minhash/ab12/_manifest.json").encode())
    assert read_json_result(state) == "/out/minhash/ab12/_manifest.json"


def test_a_persisted_json_result_is_read_without_prefect(prefect_harness, tmp_path):
    """As prefect 3.8.8 writes it: the value alone in the file, the metadata in the state."""
    from prefect import flow
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_DEFAULT_SERIALIZER, temporary_settings

    @flow(persist_result=True, result_serializer="json")
    def stage() -> dict:
        return {"manifest": "/out/scaling/cd34/_manifest.json", "runs": 3}

    with temporary_settings(
        updates={PREFECT_LOCAL_STORAGE_PATH: str(tmp_path), PREFECT_RESULTS_DEFAULT_SERIALIZER: "json"}
    ):
        state = stage(return_state=True)
        assert read_json_result(state) == {"manifest": "/out/scaling/cd34/_manifest.json", "runs": 3}


@pytest.mark.parametrize("where", ["state", "record"])
def test_a_pickled_result_is_refused_and_never_loaded(tmp_path, where):
    trap = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(str(trap)))
    state = _state(tmp_path, "pickle" if where == "state" else "json", payload, record_serializer="pickle")
    with pytest.raises(ValueError, match="reads only 'json' results"):
        read_json_result(state)
    assert not trap.exists()


def test_a_state_without_a_persisted_record_says_so(tmp_path):
    from prefect.states import Completed

    with pytest.raises(ValueError, match="no persisted result record"):
        read_json_result(Completed(data=None))


def _manifest(tmp_path, stage: str, counts: dict, **extra) -> str:
    """A finished stage's manifest with these counts, signed with the root's key as stages sign theirs."""
    d = tmp_path / stage / ("f" * 16)
    d.mkdir(parents=True)
    counts = {"in": 0, "kept": 0, "rejected": {}, "failed": {}, **counts}
    body = {"stage": stage, "fingerprint": "f" * 16, "shards": [], "counts": counts, **extra}
    write_signed_json(d / "_manifest.json", body, "manifest")
    return str(d / "_manifest.json")


def test_no_validation_split_is_a_loud_warning(tmp_path):
    small = _manifest(
        tmp_path,
        "tokenize",
        {"in": 11, "kept": 11, "rejected": {}, "failed": {}, "tokens_train": 5046, "tokens_val": 0},
    )
    warning = too_small("tokenize", small)
    assert warning and "no validation tokens" in warning and "5,046" in warning and "val_fraction" in warning
    ok = _manifest(tmp_path, "tokenize-ok", {"tokens_train": 5046, "tokens_val": 300})
    assert too_small("tokenize", ok) is None
    pre = _manifest(tmp_path, "pretrain", {}, final_train_loss=0.037, final_val_loss=None)
    assert "no validation loss" in too_small("pretrain", pre)
    md = lineage_markdown([], None, tmp_path, [warning])
    assert md.index("⚠ Warnings") < md.index("stage output(s)") and warning in md
