"""File sets in the cluster file: placement is explicit, one mirror, one set per root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lifeboat.common.clusters import ClustersFile, ClusterSpec, dump_clusters, load_clusters

NODES = [{"name": "node1", "host": "h1"}, {"name": "node2", "host": "h2"}]


def cluster(*filesets: dict[str, Any]) -> ClusterSpec:
    return ClusterSpec.model_validate({"name": "main", "nodes": NODES, "filesets": filesets})


def fileset(name: str = "uploads", root: str = "/srv/up", **extra: Any) -> dict[str, Any]:
    return {"name": name, "root": root, "placement": [{"node": "node1"}], **extra}


def test_a_file_set_with_a_mirror_and_a_pull_copy() -> None:
    spec = cluster(
        fileset(
            placement=[
                {"node": "node1", "mode": "mirror"},
                {"node": "node2", "mode": "pull", "root": "/copy/up"},
            ],
            reference_query="select path from images",
        )
    )
    fs = spec.fileset("uploads")
    assert fs.root_on("node1") == Path("/srv/up")
    assert fs.root_on("node2") == Path("/copy/up")
    assert fs.key_prefix("main") == "main/uploads/"
    assert fs.max_delete_share == 0.5
    assert [p.mode for p in fs.placement] == ["mirror", "pull"]
    with pytest.raises(KeyError):
        fs.root_on("node3")


def test_clusters_without_file_sets_still_load(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(dump_clusters(ClustersFile(clusters=(cluster(),))))
    assert load_clusters(path).cluster("main").filesets == ()


def test_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    spec = cluster(fileset(prefix="apps/up"))
    path.write_text(dump_clusters(ClustersFile(clusters=(spec,))))
    loaded = load_clusters(path).cluster("main").fileset("uploads")
    assert loaded == spec.fileset("uploads")
    assert loaded.key_prefix("main") == "apps/up/"


@pytest.mark.parametrize(
    ("filesets", "message"),
    [
        (
            [fileset(placement=[{"node": "node1"}, {"node": "node2"}])],
            "more than one mirror",
        ),
        ([fileset(placement=[{"node": "node9"}])], "unknown node"),
        (
            [fileset(placement=[{"node": "node1"}, {"node": "node1", "mode": "pull"}])],
            "more than once",
        ),
        ([fileset(), fileset()], "names a file set more than once"),
        ([fileset(), fileset("other", "/srv/up")], "share"),
        ([fileset(), fileset("inner", "/srv/up/inner")], "share"),
        ([fileset(root="relative/path")], "absolute"),
        ([fileset(prefix="../escape")], "relative"),
        ([fileset(placement=[])], "at least 1"),
        ([fileset(max_delete_share=0)], "greater than 0"),
    ],
)
def test_invalid_file_sets_are_refused(filesets: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        cluster(*filesets)


def test_the_same_root_on_two_nodes_is_fine() -> None:
    """Different hosts: the mirror on node1, another set's pull copy at that path on node2."""
    spec = cluster(
        fileset(),
        fileset("other", "/srv/up", placement=[{"node": "node2", "mode": "pull"}]),
    )
    assert len(spec.filesets) == 2
