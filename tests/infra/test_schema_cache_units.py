"""The MLflow schema cache: the scratch folder of a dump whose process was killed before renaming
it is removed by the next dump; one a live process may still be writing is left alone."""

from __future__ import annotations

import os
import time

from xregion.infra.embedded import mlflow_schema


def test_a_dump_killed_midway_leaves_a_scratch_folder_the_next_dump_removes(tmp_path):
    old = tmp_path / ".partial-killed"
    (old / "mlflow.dump").parent.mkdir()
    (old / "mlflow.dump").write_bytes(b"half a dump")
    past = time.time() - mlflow_schema.ABANDONED_AFTER_S - 60
    os.utime(old, (past, past))
    fresh = tmp_path / ".partial-in-progress"
    fresh.mkdir()
    whole = tmp_path / "mlflow-3.17-pg15-abc"  # a finished dump of an older mlflow: not scratch
    whole.mkdir()
    os.utime(whole, (past, past))

    assert mlflow_schema.remove_abandoned_dumps(tmp_path) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-in-progress", "mlflow-3.17-pg15-abc"]
