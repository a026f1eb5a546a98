#!/usr/bin/env python3
"""Prints the checks that did not run, from ctest's --output-junit file: every ctest entry reported
as skipped ("Not Run", e.g. exit code 77) with the reason its output gives, and every "NOT RUN"
line printed by an entry that did run (a sub-check that needs something this machine lacks).
Usage: skipped_checks.py <ctest-junit.xml>"""
import sys
import xml.etree.ElementTree as ET


def main(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        print('skipped checks: cannot read %s (%s)' % (path, e))
        return 1
    skipped, notes = [], []
    for tc in root.iter('testcase'):
        name = tc.get('name')
        out = (tc.findtext('system-out') or '').splitlines()
        reasons = [ln.strip() for ln in out if 'NOT RUN' in ln]
        if tc.get('status') in ('notrun', 'disabled') or tc.find('skipped') is not None:
            why = reasons[-1] if reasons else (out[-1].strip() if out else '')
            skipped.append((name, why))
        else:
            notes += [(name, r) for r in reasons]
    print()
    if not skipped and not notes:
        print('SKIPPED CHECKS: none (every check ran)')
        return 0
    print('SKIPPED CHECKS (not run here, not counted as passed): %d ctest entries, %d sub-checks'
          % (len(skipped), len(notes)))
    for name, why in skipped:
        print('  %-45s %s' % (name, why))
    for name, why in notes:
        print('  %-45s %s' % (name + ' (part)', why))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else 'ctest-junit.xml'))
