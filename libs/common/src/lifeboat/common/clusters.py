"""The cluster description file: which PostgreSQL clusters Lifeboat watches, and their nodes.

```yaml
clusters:
  - name: main
    database: app
    user: lifeboat        # control user; its password comes from LIFEBOAT_PG_PASSWORD(_FILE)
    nodes:
      - {name: node1, host: 127.0.0.1, port: 55432, priority: 100, location: dc1}
      - {name: node2, host: 127.0.0.1, port: 55433, priority: 90, tags: [nofailover]}
    filesets:             # application files kept beside the database (filesync)
      - name: uploads
        root: /srv/app/uploads
        reference_query: select path from images   # optional: rows-and-files check
        placement:        # who serves the set where: one mirror, any number of pull copies
          - {node: node1, mode: mirror}
          - {node: node2, mode: pull, root: /srv/copy/uploads}
```
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import quote

import yaml
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from lifeboat.common.redact import Dsn
from lifeboat.common.subjects import Name

NOFAILOVER_TAG = "nofailover"


class NodeSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    priority: int = Field(default=100, ge=0)
    tags: frozenset[str] = frozenset()
    location: str = "default"
    # Set for nodes whose data directory this host manages (the local stack); lets Lifeboat
    # stop, rewind or rebuild them. Remote nodes leave it empty.
    data_dir: Path | None = None

    @property
    def can_be_promoted(self) -> bool:
        return NOFAILOVER_TAG not in self.tags


class FileSetPlacement(BaseModel):
    """One filesync instance's job: the node it runs beside, and what it does with the set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node: Name
    # mirror: this node holds the files and keeps S3 current; pull: it keeps a copy from S3.
    mode: Literal["mirror", "pull"] = "mirror"
    root: Path | None = None  # where on that node; the set's root if None


class FileSetSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    root: Path
    bucket: str | None = None  # the files bucket of the settings if None
    prefix: str | None = None  # `<cluster>/<set>/` if None
    reference_query: str | None = None  # lists the paths (relative to the root) rows refer to
    placement: tuple[FileSetPlacement, ...] = Field(min_length=1)
    # More than this share of the set gone in one pass pauses it instead of deleting.
    max_delete_share: float = Field(default=0.5, gt=0, le=1)
    tombstone_days: float = Field(default=7, ge=0)  # deleted files stay recoverable this long

    @model_validator(mode="after")
    def _check(self) -> FileSetSpec:
        roots = [self.root, *(p.root for p in self.placement if p.root is not None)]
        if not all(r.is_absolute() for r in roots):
            raise ValueError(f"file set {self.name!r}: roots must be absolute paths")
        if self.prefix is not None and (
            self.prefix.startswith("/") or ".." in PurePosixPath(self.prefix).parts
        ):
            raise ValueError(f"file set {self.name!r}: prefix must be relative, without '..'")
        mirrors = [p.node for p in self.placement if p.mode == "mirror"]
        if len(mirrors) > 1:
            raise ValueError(f"file set {self.name!r} has more than one mirror: {mirrors}")
        nodes = [p.node for p in self.placement]
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"file set {self.name!r} places a node more than once: {nodes}")
        return self

    def root_on(self, node: str) -> Path:
        for p in self.placement:
            if p.node == node:
                return p.root or self.root
        raise KeyError(f"file set {self.name!r} is not placed on node {node!r}")

    def key_prefix(self, cluster: str) -> str:
        prefix = self.prefix if self.prefix is not None else f"{cluster}/{self.name}/"
        return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _nested(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


class ClusterSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    database: str = "postgres"
    user: str = "postgres"
    replication_user: str = "replicator"
    sslmode: str = "prefer"
    nodes: tuple[NodeSpec, ...] = Field(min_length=1)
    filesets: tuple[FileSetSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_nodes(self) -> ClusterSpec:
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster {self.name!r} names node(s) {dupes} more than once")
        return self

    @model_validator(mode="after")
    def _placed_filesets(self) -> ClusterSpec:
        sets = [f.name for f in self.filesets]
        if len(set(sets)) != len(sets):
            raise ValueError(f"cluster {self.name!r} names a file set more than once: {sets}")
        nodes = {n.name for n in self.nodes}
        served: list[tuple[str, Path, str]] = []  # (node, root, set) of every placement
        for fs in self.filesets:
            for p in fs.placement:
                if p.node not in nodes:
                    raise ValueError(f"file set {fs.name!r} is placed on unknown node {p.node!r}")
                root = fs.root_on(p.node)
                # Two sets over one directory tree on one node would mirror or overwrite
                # each other's files: one root, one set.
                for node, other, name in served:
                    if node == p.node and _nested(root, other):
                        raise ValueError(
                            f"file sets {name!r} and {fs.name!r} share {root} on {node!r}"
                        )
                served.append((p.node, root, fs.name))
        return self

    def fileset(self, name: str) -> FileSetSpec:
        for fs in self.filesets:
            if fs.name == name:
                return fs
        raise KeyError(f"cluster {self.name!r} has no file set {name!r}")

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"cluster {self.name!r} has no node {name!r}")

    def remote(self) -> ClusterSpec:
        """This cluster as a service on another host than its nodes sees it: no node's data
        directory is its own, so it acts on them over SQL and through their agents."""
        nodes = tuple(n.model_copy(update={"data_dir": None}) for n in self.nodes)
        return self.model_copy(update={"nodes": nodes})

    def node_dsn(
        self, node: NodeSpec, password: SecretStr | None, *, connect_timeout: float = 2
    ) -> Dsn:
        params: dict[str, str | int] = {
            "host": node.host,
            "port": node.port,
            "dbname": self.database,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "lifeboat",
        }
        if password is not None:
            params["password"] = password.get_secret_value()
        return Dsn(make_conninfo("", **params))

    def client_dsn(self, *, user: str | None = None, passfile: Path | None = None) -> str:
        """The multi-host URI applications use; libpq finds the writable node itself.

        With `user` and `passfile` it connects as printed (libpq reads the password from the
        file), so it can be pasted into psql without putting the password on the screen.
        """
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.nodes)
        who = f"{quote(user, safe='')}@" if user else ""
        query = "target_session_attrs=read-write"
        if passfile is not None:
            query += f"&passfile={quote(str(passfile))}"
        return f"postgresql://{who}{hosts}/{self.database}?{query}"

    def jdbc_url(self, *, user: str | None = None) -> str:
        """The same for JDBC, whose driver reads no passfile: the password goes separately."""
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.nodes)
        who = f"&user={quote(user, safe='')}" if user else ""
        return f"jdbc:postgresql://{hosts}/{self.database}?targetServerType=primary{who}"


class ClustersFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    clusters: tuple[ClusterSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_clusters(self) -> ClustersFile:
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster names must be unique, got {names}")
        return self

    def cluster(self, name: str) -> ClusterSpec:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no cluster named {name!r}")


class ClusterFileError(ValueError):
    pass


def load_clusters(path: Path) -> ClustersFile:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClusterFileError(f"cannot read cluster file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ClusterFileError(f"cluster file {path} is not valid YAML: {exc}") from None
    try:
        return ClustersFile.model_validate(raw)
    except ValidationError as exc:
        raise ClusterFileError(f"cluster file {path} is invalid:\n{exc}") from None


def dump_clusters(clusters: ClustersFile) -> str:
    return yaml.safe_dump(clusters.model_dump(mode="json", exclude_none=True), sort_keys=False)
