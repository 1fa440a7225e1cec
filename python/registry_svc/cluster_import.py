"""Records written into etcd outside the API: the cluster's first admin token, and
`registry-svc cluster import`, which moves a single-machine store into etcd."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from registry_svc import _core
from registry_svc.auth import TOKENS, hash_secret, holds_valid_token, new_token_record, write_secret_file
from registry_svc.cluster import CATCH_UP_S
from registry_svc.etcd import Client, EtcdAmbiguous, EtcdError, EtcdUnavailable, parse_endpoints, prefix_end, unb64
from registry_svc.etcd_keys import COLLECTIONS, Layout, cmp_absent, op_get, op_put, prefix_problem, range_kv, record_ops

log = logging.getLogger("registry_svc")


def ensure_admin_token(store: _core.Store, etcd: Client, layout: Layout, path: Path) -> bool:
    """The cluster's first admin token: created (with `path` holding its secret) by the
    first server to start on an empty prefix, in one create-if-absent txn on the bootstrap
    key; every later server keeps the token file it has, if that token is valid. Returns
    True when this server created it."""
    if holds_valid_token(store, path):
        return False
    secret, record = new_token_record("admin", None, "bootstrap admin token (admin.token of the first server)")
    json = orjson.dumps(record)
    _, ops = record_ops(layout, TOKENS, record["id"], json)
    try:
        answer = etcd.txn(
            [cmp_absent(layout.bootstrap)],
            [*ops, op_put(layout.bootstrap, record["id"])],
            [op_get(layout.bootstrap)],
        )
        ours = bool(answer.get("succeeded"))
        holder_kv = None if ours else range_kv(answer, 0)
        holder = unb64(holder_kv.get("value", "")).decode() if holder_kv else "?"
        revision = int(answer["header"]["revision"])
    except EtcdAmbiguous:
        # Sent, its answer lost: the bootstrap key says whether it was ours (never sent twice).
        held = etcd.get(layout.bootstrap)
        if held is None:
            raise EtcdUnavailable("the bootstrap txn's answer was lost and it did not apply; start again") from None
        holder = held.value.decode()
        ours = holder == record["id"]
        revision = held.mod_revision
    if not ours:
        log.warning(
            "registry-svc: this cluster's admin token was created by another server (token %s); copy its "
            "admin.token here or log in with a token made there (see README, Running a cluster)",
            holder,
        )
        return False
    store.wait_index(revision, CATCH_UP_S)
    write_secret_file(path, secret)
    return True


def import_store(store: _core.Store, client: Client, layout: Layout, admin_token: str | None) -> dict[str, int]:
    """Writes every record of `store` into etcd under `layout` (one txn per record, each
    with its guard keys, create-if-absent); returns counts per collection. Refuses a
    prefix that already holds records."""
    if client.range(layout.rec_prefix, prefix_end(layout.rec_prefix), count_only=True).get("count", "0") != "0":
        raise ValueError(f"etcd prefix '{layout.prefix}' already holds records; import into an empty prefix")
    counts: dict[str, int] = {}
    for collection in COLLECTIONS:
        _, raws = store.list(collection)
        for raw in raws:
            record = orjson.loads(raw)
            compares, ops = record_ops(layout, collection, record["id"], raw)
            key = layout.rec(collection, record["id"])
            answer = client.txn([cmp_absent(key), *compares], ops, [])
            if not answer.get("succeeded"):
                raise ValueError(f"{collection}/{record['id']}: already in etcd, or a unique field is taken there")
        counts[collection] = len(raws)
    if admin_token:
        ids = store.ids_by(TOKENS, "secretHash", hash_secret(admin_token))
        if ids:
            # The imported admin token is the cluster's first: no server mints another.
            client.txn([cmp_absent(layout.bootstrap)], [op_put(layout.bootstrap, ids[0])], [])
    return counts


def main(data_dir: str, endpoints: str, prefix: str) -> int:
    """`registry-svc cluster import`."""
    source = Path(data_dir).expanduser()
    if problem := prefix_problem(prefix):
        log.error("registry-svc: --etcd-prefix %s", problem)
        return 2
    if not (source / "store" / "data.mdb").exists():
        log.error("registry-svc: %s holds no store (expected %s)", source, source / "store" / "data.mdb")
        return 2
    try:
        client = Client(parse_endpoints(endpoints))
    except ValueError as e:
        log.error("registry-svc: --etcd: %s", e)
        return 2
    try:
        store = _core.Store(str(source / "store"))
    except (_core.StoreError, OSError) as e:
        log.error("registry-svc: %s is not a registry-svc store (LMDB) it can open: %s", source / "store", e)
        return 2
    try:
        if store.state(_core.REPLICA_STATE):
            log.error("registry-svc: %s is a cluster replica, not a single-machine store", source)
            return 2
        token_file = source / "admin.token"
        admin = token_file.read_text().strip() if token_file.exists() else None
        counts = import_store(store, client, Layout(prefix), admin)
    except (ValueError, EtcdError, EtcdUnavailable) as e:
        log.error("registry-svc: import failed: %s", e)
        return 1
    finally:
        store.close()
    summary = ", ".join(f"{n} {c}" for c, n in counts.items())
    print(f"imported {summary} into etcd prefix {prefix}")
    if admin:
        print(
            f"the admin token in {token_file} is valid on the cluster: copy it to the servers' data dirs or `oo login` with it"
        )
    return 0
