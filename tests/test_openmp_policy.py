"""The OpenMP wait policy cnncore asks for when it loads its runtime (cnncore._kernels)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = ("import json, os, cnncore; from cnncore import _kernels; "
         "print(json.dumps([_kernels.WAIT_POLICY, 'OMP_WAIT_POLICY' in os.environ "
         "or 'GOMP_SPINCOUNT' in os.environ, "
         "cnncore.config()['omp_wait_policy']]))")


def _probe(**env_vars):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CNNCORE_OMP_WAIT_POLICY")}
    env.update(env_vars)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the cnncore under test
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=120)
    return out


def test_brief_spin_by_default_and_the_variable_does_not_leak():
    out = _probe()
    assert out.returncode == 0, out.stderr
    policy, leaked, reported = json.loads(out.stdout)
    assert policy["requested"] == "brief"
    assert policy["applied"] in (True, None)  # a fresh process: nothing loaded libgomp before
    assert not leaked
    assert reported == policy


@pytest.mark.parametrize("var", ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"])
def test_the_users_own_setting_wins(var):
    out = _probe(**{var: "active" if var == "OMP_WAIT_POLICY" else "1000"})
    assert out.returncode == 0, out.stderr
    policy, _, _ = json.loads(out.stdout)
    assert policy["requested"] is None and var in policy["source"]


@pytest.mark.parametrize("choice, requested", [("active", "active"), ("passive", "passive"),
                                               ("default", None)])
def test_cnncore_omp_wait_policy_chooses(choice, requested):
    out = _probe(CNNCORE_OMP_WAIT_POLICY=choice)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["requested"] == requested


def test_a_bad_choice_is_refused_by_name():
    out = _probe(CNNCORE_OMP_WAIT_POLICY="sometimes")
    assert out.returncode != 0
    assert "CNNCORE_OMP_WAIT_POLICY" in out.stderr and "'sometimes'" in out.stderr


def test_show_config_prints_the_policy(capsys):
    import cnncore
    cnncore.show_config()
    assert "wait policy:" in capsys.readouterr().out
