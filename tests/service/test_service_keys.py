"""API keys: stored as hashes only, constant-time checks, credits that stay exact under concurrency, CLI."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

from typer.testing import CliRunner

from sd3pose.cli import app
from sd3pose.cli.serve import check_bind_safety
from sd3pose.service.keys import KeyStore
from sd3pose.service.store import Database
from sd3pose.settings import ServiceSettings


def test_keys_are_stored_only_as_hashes(tmp_path) -> None:
    store = KeyStore(Database(tmp_path / "db.sqlite"))
    key, secret = store.create("alice", credits=5)
    assert store.verify(secret) == key
    assert store.verify(secret + "x") is None and store.verify("sd3p_nope_x") is None and store.verify("") is None
    raw = (tmp_path / "db.sqlite").read_bytes() + (tmp_path / "db.sqlite-wal").read_bytes()
    assert secret.encode() not in raw and secret.split("_", 2)[2].encode() not in raw
    store.revoke(key.id)
    assert store.verify(secret) is None


def test_concurrent_reservations_never_overspend(tmp_path) -> None:
    store = KeyStore(Database(tmp_path / "db.sqlite"))
    key, _ = store.create("alice", credits=50)
    with ThreadPoolExecutor(8) as pool:
        granted = list(pool.map(lambda _: store.reserve(key.id, 3), range(40)))
    assert sum(granted) == 16  # 16 * 3 = 48 <= 50 < 51
    assert store.balance(key.id) == 2
    unlimited, _ = store.create("ops", credits=None)
    assert store.reserve(unlimited.id, 1000) and store.balance(unlimited.id) is None


def test_keys_cli(tmp_path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(app, ["keys", "create", "--name", "alice", "--credits", "5", "--scope", "pose", *data])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("sd3p_")
    assert runner.invoke(app, ["keys", "create", "--name", "ops", "--unlimited", *data]).exit_code == 0
    both = runner.invoke(app, ["keys", "create", "--name", "x", "--credits", "1", "--unlimited", *data])
    assert both.exit_code == 2 and "exactly one of --credits C or --unlimited" in both.output
    added = runner.invoke(app, ["keys", "add-credits", "alice", "2.5", *data])
    assert added.exit_code == 0 and "7.5 credits" in added.output
    listed = runner.invoke(app, ["keys", "list", *data])
    assert "alice" in listed.output and "7.5" in listed.output and "unlimited" in listed.output
    assert secret not in listed.output
    assert runner.invoke(app, ["keys", "revoke", "alice", *data]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list", *data]).output
    missing = runner.invoke(app, ["keys", "revoke", "nobody", *data])
    assert missing.exit_code == 2 and "sd3pose keys list" in missing.output
    rows = sqlite3.connect(tmp_path / "sd3pose.db").execute("SELECT key_hash FROM api_keys").fetchall()
    assert all(len(r[0]) == 64 for r in rows)


def test_serve_refuses_a_public_address_without_keys(tmp_path) -> None:
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--insecure-no-auth" in result.output
    check_bind_safety(ServiceSettings(host="0.0.0.0", insecure_no_auth=True), 0)
    check_bind_safety(ServiceSettings(host="0.0.0.0"), 1)
    check_bind_safety(ServiceSettings(host="127.0.0.1"), 0)
    check_bind_safety(ServiceSettings(host="::1"), 0)


def test_credits_stay_finite_and_never_go_below_zero(tmp_path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    # NaN would be stored as NULL, which means "unlimited".
    nan = runner.invoke(app, ["keys", "create", "--name", "n", "--credits", "nan", *data])
    assert nan.exit_code == 2 and "--credits must be a finite number" in nan.output
    assert runner.invoke(app, ["keys", "create", "--name", "bob", "--credits", "5", *data]).exit_code == 0
    for amount in ("nan", "inf", "-inf"):
        refused = runner.invoke(app, ["keys", "add-credits", "bob", amount, *data])
        assert refused.exit_code == 2 and "finite number of credits" in refused.output
    too_much = runner.invoke(app, ["keys", "add-credits", "bob", "-100", *data])  # a negative amount, not an option
    assert too_much.exit_code == 2 and "removing 100 would leave it below 0" in too_much.output
    removed = runner.invoke(app, ["keys", "add-credits", "bob", "-3", *data])
    assert removed.exit_code == 0 and "now has 2 credits" in removed.output


def test_keys_commands_explain_a_bad_data_dir_or_broker_in_one_line(tmp_path) -> None:
    runner = CliRunner()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "sd3pose.db").write_text("not a database")
    for args in (
        ["keys", "list", "--data-dir", str(tmp_path / "a-file")],
        ["keys", "list", "--data-dir", str(tmp_path / "corrupt")],
        ["keys", "revoke", "x", "--broker", "notaurl"],
        ["keys", "add-credits", "x", "1", "--broker", "notaurl"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
        assert "error:" in result.output and ("--data-dir" in result.output or "--broker" in result.output)


def test_out_of_range_numbers_are_refused_before_anything_loads(tmp_path) -> None:
    runner = CliRunner()
    port = runner.invoke(app, ["serve", "--port", "70000", "--data-dir", str(tmp_path)])
    assert port.exit_code == 2 and "--port" in port.output
    rate = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--name",
            "h",
            "--credits",
            "1",
            "--rate-limit",
            "1" + "0" * 20,
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert rate.exit_code == 2 and "--rate-limit" in rate.output


def test_removing_credits_checks_the_floor_atomically_and_balances_stay_finite(tmp_path) -> None:
    import pytest

    from sd3pose.errors import InvalidRequestError

    store = KeyStore(Database(tmp_path / "db.sqlite"))
    key, _ = store.create("bob", credits=5)
    real_get = store.get

    def get_then_a_request_reserves(key_id: str):
        found = real_get(key_id)
        assert store.reserve(key_id, 3)
        return found

    store.get = get_then_a_request_reserves
    with pytest.raises(InvalidRequestError, match="has 2 credits; removing 5 would leave it below 0"):
        store.add_credits(key.id, -5)
    store.get = real_get
    assert store.balance(key.id) == 2
    # Balances are whole micro-credits: a billion credits at most, never a float that could reach inf
    # (which would read as "never runs out").
    store.add_credits(key.id, 999_999_990)
    with pytest.raises(InvalidRequestError, match="cannot hold more than 1000000000 credits"):
        store.add_credits(key.id, 1e308)
    assert store.balance(key.id) == 999_999_992
