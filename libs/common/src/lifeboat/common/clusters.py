"""The cluster description file: which PostgreSQL clusters Lifeboat watches, and their nodes.

```yaml
clusters:
  - name: main
    database: app
    user: lifeboat        # control user; its password comes from LIFEBOAT_PG_PASSWORD(_FILE)
    nodes:
      - {name: node1, host: 127.0.0.1, port: 55432, priority: 100, location: dc1}
      - {name: node2, host: 127.0.0.1, port: 55433, priority: 90, tags: [nofailover]}
```
"""

from __future__ import annotations

from pathlib import Path
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


class ClusterSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    database: str = "postgres"
    user: str = "postgres"
    replication_user: str = "replicator"
    sslmode: str = "prefer"
    nodes: tuple[NodeSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_nodes(self) -> ClusterSpec:
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster {self.name!r} names node(s) {dupes} more than once")
        return self

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"cluster {self.name!r} has no node {name!r}")

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
