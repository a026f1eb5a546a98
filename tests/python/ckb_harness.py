"""Shared harness of the converter-level Python tests: paths of the built programs, check() that
records a named result and keeps going, and main() that runs a test body in a scratch directory and
prints the closing "N passed, M failed" line ctest reads."""
import os
import shutil
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get('CKB_SOURCE_DIR', os.path.join(HERE, '..', '..'))
BUILD = os.environ.get('CKB_BUILD_DIR', os.path.join(SRC, 'build'))
EXAMPLES = os.path.join(BUILD, 'examples')
CONVERT = os.path.join(EXAMPLES, 'ckbridge_convert')
VERIFY = os.path.join(EXAMPLES, 'ckbridge_verify')
MAKE_TINY = os.path.join(EXAMPLES, 'deepseek_v3_make_tiny')
CFG = os.path.join(SRC, 'configs', 'deepseek_v3', 'deepseek_v3_tiny.yaml')
CONV = os.path.join(SRC, 'configs', 'deepseek_v3', 'ckpt_convert', 'deepseek_v3_convert.yaml')

PASSED, FAILED = [], []


def check(name, fn, *args):
    try:
        fn(*args)
        PASSED.append(name)
        print('PASS', name, flush=True)
    except Exception:  # noqa: BLE001 - report every failure, keep going
        FAILED.append(name)
        print('FAIL', name, flush=True)
        traceback.print_exc()


def main(run_all, programs, prefix):
    """Runs run_all(work_dir) if every program exists; returns the exit code."""
    for exe in programs:
        if not os.path.exists(exe):
            print('missing %s (build the examples first)' % exe)
            print('0 passed, 1 failed')
            return 1
    work = tempfile.mkdtemp(prefix=prefix)
    try:
        run_all(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print('%d passed, %d failed' % (len(PASSED), len(FAILED)))
    return 0 if not FAILED else 1
