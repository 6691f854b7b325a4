"""actors.emulator.pool: leases on a real local Ray — no collisions between concurrent holders,
crash → restart → retry, dead holders' leases reclaimed and fenced off, failed restarts →
replacement, acquire timeouts. The devices are tests.fake_devices.FakeDevice, whose per-device
log file shows exactly who did what on each device, in order."""
from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:   # `tests.fake_devices` must resolve here exactly as in the workers
    sys.path.insert(0, ROOT)

from actors.emulator.device import DeviceCrashed, DeviceError  # noqa: E402
from actors.emulator.factory import DeviceSpec, make_device  # noqa: E402
from actors.emulator.lease import LeasedDevice, leased_device, run_with_device  # noqa: E402
from actors.emulator.pool import DeviceActor, LeaseLost, PoolTimeout, TaskFailed, create_pool  # noqa: E402
from tests.fake_devices import CRASH_TEXT, FakeDevice, Holder, read_log  # noqa: E402

FAKE = "tests.fake_devices:FakeDevice"


@pytest.fixture(scope="module")
def ray_local():
    started, saved = not ray.is_initialized(), os.environ.get("PYTHONPATH")
    if started:   # workers inherit PYTHONPATH, so they import tests.fake_devices like we do
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, saved) if p)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)


@pytest.fixture
def make_pool(ray_local, tmp_path, request):
    """``make_pool(size, **options)`` → (pool handle, log dir); shut down after the test."""
    pools = []

    def make(size: int, **options):
        name = f"{request.node.name}-{len(pools)}"
        options = {"lease_ttl_s": 1.0, "health_interval_s": 0.5, **options}
        pool = create_pool(name, DeviceSpec(FAKE, {"log_dir": str(tmp_path)}), size, **options)
        pools.append(pool)
        return pool, str(tmp_path)

    yield make
    for pool in pools:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)


def stats(pool) -> dict:
    return ray.get(pool.stats.remote())


def wait_for(predicate, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def lease_runs(log: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """The device's type_text tags collapsed into runs of (lease id, ops), separated by the
    resets between them: a lease that appears in two runs interleaved with another one."""
    runs: list[tuple[str, int]] = []
    for op, arg in log:
        if op == "reset":
            runs.append(("reset", 0))
        elif op == "type_text" and arg != CRASH_TEXT:
            lease = arg.split("|")[1]
            if runs and runs[-1][0] == lease:
                runs[-1] = (lease, runs[-1][1] + 1)
            else:
                runs.append((lease, 1))
    return runs


# -- the DeviceActor alone, without Ray ------------------------------------------------------------

def test_device_actor_fences_calls_and_remembers_crashes(tmp_path):
    actor = DeviceActor(DeviceSpec(FAKE, {"log_dir": str(tmp_path)}), 3)
    info = actor.info()
    assert info["serial"] == "fakedevice-3" and info["size"] == (1080, 1920)
    assert info["interface"]["tap"] == "method" and "restart" not in info["interface"]
    with pytest.raises(LeaseLost):
        actor.call("nobody", "tap", 1, 2)
    actor.grant("L1")
    actor.call("L1", "tap", 1, 2)
    assert actor.observe("L1").app == "launcher"
    with pytest.raises(ValueError, match="restart"):
        actor.call("L1", "restart")
    with pytest.raises(DeviceError) as step_error:   # a step error: the device stays fine
        actor.call("L1", "open_app", "nope")
    assert pickle.loads(pickle.dumps(step_error.value)).code == "unknown_app"   # crosses Ray
    assert actor.health()
    with pytest.raises(DeviceCrashed):
        actor.call("L1", "type_text", CRASH_TEXT)
    assert not actor.health()
    with pytest.raises(DeviceCrashed):
        actor.reset()
    actor.restart()
    assert actor.health()
    actor.revoke()
    with pytest.raises(LeaseLost, match="L1"):
        actor.call("L1", "tap", 1, 2)
    assert ("tap", "1,2") in read_log(str(tmp_path), "fakedevice-3")


def test_make_device_names_unknown_backends(tmp_path):
    assert isinstance(make_device(DeviceSpec(FAKE, {"log_dir": str(tmp_path)}), 0), FakeDevice)
    with pytest.raises(ValueError, match="'bogus'"):
        make_device(DeviceSpec("bogus"), 0)
    with pytest.raises(ValueError, match="serials"):
        make_device(DeviceSpec("adb", {}), 0)
    with pytest.raises(ValueError, match="only 1 serials"):
        make_device(DeviceSpec("adb", {"serials": ["emulator-5554"]}), 1)


# -- the pool on Ray -------------------------------------------------------------------------------

def test_concurrent_holders_never_share_a_device(make_pool):
    pool, log_dir = make_pool(2)
    workers = [ray.remote(Holder).options(num_cpus=0).remote(pool, f"w{i}") for i in range(4)]
    leases = ray.get([w.cycles.remote(6, steps=3) for w in workers])
    all_leases = [lease for per_worker in leases for lease in per_worker]
    assert len(set(all_leases)) == 4 * 6

    seen = {}
    for serial in ("fakedevice-0", "fakedevice-1"):
        runs = [r for r in lease_runs(read_log(log_dir, serial)) if r[0] != "reset"]
        ids = [lease for lease, _ in runs]
        assert len(ids) == len(set(ids)), f"a lease's operations interleaved on {serial}"
        assert all(ops == 3 for _, ops in runs)
        seen.update(dict.fromkeys(ids, serial))
        full = lease_runs(read_log(log_dir, serial))
        assert all(a[0] == "reset" or b[0] == "reset" for a, b in zip(full, full[1:])), \
            f"{serial} went to a new holder without a reset"
    assert set(seen) == set(all_leases)
    assert set(seen.values()) == {"fakedevice-0", "fakedevice-1"}
    s = wait_for(lambda: (s := stats(pool))["free"] == 2 and s, what="both devices free")
    assert s["crashes"] == s["expired_leases"] == 0


def test_crash_mid_task_restarts_device_and_retries(make_pool):
    pool, log_dir = make_pool(2)
    attempts = []

    def task(device):
        attempts.append(device.serial)
        device.type_text(CRASH_TEXT if len(attempts) == 1 else "fine")
        return device.current_app()

    assert run_with_device(pool, "rollout-1", task, retries=1) == "launcher"
    assert len(attempts) == 2
    s = wait_for(lambda: (s := stats(pool))["restarts"] >= 1 and s["free"] == 2 and s,
                 what="the crashed device restarted")
    assert s["crashes"] == 1 and s["replacements"] == 0
    assert ("restart", "") in read_log(log_dir, attempts[0])

    def always_crashes(device):
        device.type_text(CRASH_TEXT)

    with pytest.raises(TaskFailed, match=r"rollout-2: the device crashed on all 3 attempts"):
        run_with_device(pool, "rollout-2", always_crashes, retries=2)
    s = wait_for(lambda: (s := stats(pool))["restarts"] >= 4 and s["free"] == 2 and s,
                 what="every crashed device restarted")
    assert s["crashes"] == 4


def test_idle_device_that_dies_is_restarted_by_health_checks(make_pool):
    pool, log_dir = make_pool(1)
    (Path(log_dir) / "fakedevice-0.dead").touch()
    s = wait_for(lambda: (s := stats(pool))["restarts"] >= 1 and s["free"] == 1 and s,
                 what="the health check to restart the dead device")
    assert s["crashes"] == 1
    assert not (Path(log_dir) / "fakedevice-0.dead").exists()


def test_dead_holders_lease_is_reclaimed_and_fenced(make_pool):
    pool, log_dir = make_pool(1, lease_ttl_s=1.0)
    holder = ray.remote(Holder).options(num_cpus=0).remote(pool, "doomed")
    stale = ray.get(holder.hold.remote())
    time.sleep(1.5)   # the holder renews while alive: its lease outlives the TTL
    assert stats(pool)["devices"][0]["holder"] == "doomed"
    ray.kill(holder)

    started = time.monotonic()
    with leased_device(pool, "successor", timeout_s=10) as device:
        assert time.monotonic() - started < 5
        assert device.serial == stale.serial
        device.type_text(f"successor|{device.lease.lease_id}|0")
        with pytest.raises(LeaseLost):   # the dead holder's lease, used late
            LeasedDevice(stale).type_text(f"doomed|{stale.lease_id}|late")
        with pytest.raises(LeaseLost):
            ray.get(pool.renew.remote(stale.lease_id))
    assert ray.get(pool.release.remote(stale.lease_id)) is False
    assert stats(pool)["expired_leases"] == 1
    ops = [op for op, arg in read_log(log_dir, stale.serial) if "late" not in arg]
    assert ops[-3:] == ["reset", "type_text", "reset"]   # reset between doomed and successor
    assert not any("late" in arg for _, arg in read_log(log_dir, stale.serial))


def test_failed_restarts_replace_the_device_actor(make_pool):
    pool, log_dir = make_pool(1, max_failures=2)
    (Path(log_dir) / "fakedevice-0.fail_restarts").write_text("2")
    name = ray.get(pool.stats.remote())["name"]
    old = ray.get_actor(f"{name}:device:0")

    with pytest.raises(TaskFailed, match="emulator process exited"):
        run_with_device(pool, "r", lambda d: d.type_text(CRASH_TEXT), retries=0)
    s = wait_for(lambda: (s := stats(pool))["replacements"] == 1 and s["free"] == 1 and s,
                 what="the device actor replaced")
    assert s["failed_restarts"] == 2 and s["devices"][0]["generation"] == 1
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(old.info.remote(), timeout=10)
    fresh = ray.get_actor(f"{name}:device:0:1")
    assert ray.get(fresh.health.remote())
    assert run_with_device(pool, "r", lambda d: d.current_app()) == "launcher"


def test_acquire_times_out_naming_pool_and_holder(make_pool):
    pool, _ = make_pool(1)
    with leased_device(pool, "hog", timeout_s=5):
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match=r"pool '.*-0': no healthy device free for holder "
                                              r"'latecomer' within 0.5s \(1 leased\)"):
            with leased_device(pool, "latecomer", timeout_s=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 3
    with leased_device(pool, "latecomer", timeout_s=5) as device:
        assert device.serial == "fakedevice-0"


@pytest.mark.skipif(not (Path(ROOT) / "actors/emulator/simulated").is_dir(),
                    reason="the simulated backend is not in this checkout")
def test_simulated_devices_crash_restart_and_retry(ray_local, request):
    """The real simulated backend: step errors stay with the step; injected crashes
    (crash_after=2) are restarted, and the retried task finishes on a restarted device."""
    pool = create_pool(request.node.name, DeviceSpec("simulated", {"crash_after": 2}), 2,
                       lease_ttl_s=2.0, health_interval_s=0.5)
    attempts = []
    try:
        def task(device):
            attempts.append(device.serial)
            assert device.size == (540, 1200)
            device.load_state(device.state)      # backend extras: a method and a property
            first = device.observe()
            with pytest.raises(DeviceError) as step_error:
                device.open_app("no-such-app")   # action 1: a step error, not a crash
            assert step_error.value.code == "unknown_app"
            device.press("home")                 # action 2: crashes a fresh device
            return first, device.observe()

        first, last = run_with_device(pool, "sim-rollout", task, retries=2)
        assert first.png.startswith(b"\x89PNG") and "<hierarchy" in first.xml
        assert last.app == "launcher" and "#" in last.screen_id
        s = wait_for(lambda: (s := stats(pool))["free"] == 2 and s, what="devices back")
        # attempt 1 crashes; attempt 2 crashes too unless it got the restarted device
        assert len(attempts) in (2, 3) and s["crashes"] == s["restarts"] == len(attempts) - 1
        assert {d["serial"] for d in s["devices"]} == {"sim-0", "sim-1"}
    finally:
        ray.get(pool.shutdown.remote())
        ray.kill(pool)
