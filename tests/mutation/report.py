"""The mutation-testing report: mutmut's results per module, as a Markdown page.

    python tests/mutation/report.py [--mutants mutants] [--out docs/mutation.md]

Reads the ``.meta`` files mutmut writes under ``mutants/`` (each mutant's exit code) and
``tests/mutation/justified.txt`` (survivors that no test here can kill, each with the reason:
equivalent, or GPU only), and prints per module: mutants, killed (a failing test, a timeout or
a crash), justified, survived (no test failed, or no test ran the code), and the killed
fraction of the others; then every survivor and every justified mutant by name.
"""
import argparse
import collections
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
JUSTIFIED = HERE / 'justified.txt'
TARGET = 0.90

# mutmut's exit codes (mutmut.stats.status_by_exit_code) grouped into what the report counts,
# and pytest's 4 in a fresh process: the mutant broke the import of what conftest.py imports.
# Not a kill: mutmut's 255 (which it calls a timeout), its runner's own failure, such as pytest
# unable to collect the tests asked for; such mutants are counted apart and must run again.
KILLED_CODES = {1, 3, 4, 36, 24, -24, 152, -11, -9}
SURVIVED_CODES = {0, 5, 33}


def read_results(mutants: Path) -> Dict[str, Optional[int]]:
    """Each mutant's exit code (None: not run), from the ``.meta`` files under ``mutants``,
    where a run in a fresh process (tests/mutation/fresh_process.py) killed one, that kill."""
    codes = {}
    for meta in sorted(mutants.rglob('*.meta')):
        codes.update(json.loads(meta.read_text())['exit_code_by_key'])
    fresh = mutants / 'fresh_process.json'
    if fresh.exists():
        codes.update({mutant: code for mutant, code in json.loads(fresh.read_text()).items()
                      if outcome(code) == 'killed'})
    return codes


def read_justified(path: Path = JUSTIFIED) -> Dict[str, str]:
    """Mutant name -> why no test here kills it, from lines ``name: reason`` (``#`` starts a comment
    line)."""
    justified = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        name, sep, reason = line.partition(':')
        if not sep or not reason.strip():
            raise ValueError(f'{path}: {line!r} expected "mutant name: reason"')
        justified[name.strip()] = reason.strip()
    return justified


def module_of(mutant: str) -> str:
    """``pkg.module.x_function__mutmut_3`` (or a method's ``xǁClassǁmethod__mutmut_3``) ->
    ``pkg.module``."""
    return mutant.rsplit('.', 1)[0]


def outcome(code: Optional[int]) -> str:
    if code in KILLED_CODES:
        return 'killed'
    if code in SURVIVED_CODES:
        return 'survived'
    return 'not run' if code is None else f'exit code {code}'


def tally(codes: Dict[str, Optional[int]], justified: Dict[str, str]
          ) -> Dict[str, collections.Counter]:
    """Per module, the count of each outcome; justified mutants that survived count as
    ``justified``, and a listed one that was killed fails the report."""
    by_module: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for mutant, code in codes.items():
        result = outcome(code)
        if mutant in justified:
            if result == 'killed':
                raise ValueError(f'{mutant} is listed as justified but a test kills it')
            result = 'justified'
        by_module[module_of(mutant)][result] += 1
    return dict(sorted(by_module.items()))


def score(counts: collections.Counter) -> float:
    """Killed fraction of the mutants that ran, justified ones apart."""
    relevant = counts['killed'] + counts['survived']
    return counts['killed'] / relevant if relevant else 1.0


def markdown(codes: Dict[str, Optional[int]], justified: Dict[str, str]) -> List[str]:
    table = tally(codes, justified)
    lines = ['| module | mutants | killed | justified | survived | other | killed fraction |',
             '|---|---|---|---|---|---|---|']
    total: collections.Counter = collections.Counter()
    for module, counts in table.items():
        total.update(counts)
        other = sum(n for k, n in counts.items()
                    if k not in ('killed', 'justified', 'survived'))
        lines.append(f'| `{module}` | {sum(counts.values())} | {counts["killed"]} | '
                     f'{counts["justified"]} | {counts["survived"]} | {other} | '
                     f'{score(counts):.1%} |')
    other = sum(n for k, n in total.items() if k not in ('killed', 'justified', 'survived'))
    lines.append(f'| all | {sum(total.values())} | {total["killed"]} | {total["justified"]} '
                 f'| {total["survived"]} | {other} | {score(total):.1%} |')
    survivors = [m for m, c in codes.items() if outcome(c) == 'survived' and m not in justified]
    lines += ['', f'Survivors ({len(survivors)}):', '']
    lines += [f'- `{m}`' for m in sorted(survivors)] or ['- none']
    lines += ['', f'Justified survivors ({len(justified)}), with why no test here kills them:', '']
    lines += [f'- `{m}`: {why}' for m, why in sorted(justified.items())] or ['- none']
    return lines


def below_target(codes: Dict[str, Optional[int]], justified: Dict[str, str]
                 ) -> List[Tuple[str, float]]:
    return [(m, score(c)) for m, c in tally(codes, justified).items() if score(c) < TARGET]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mutants', type=Path, default=Path('mutants'),
                        help="mutmut's working folder (default: mutants)")
    parser.add_argument('--out', type=Path, help='write the Markdown here too')
    args = parser.parse_args(argv)
    codes = read_results(args.mutants)
    if not codes:
        parser.error(f'{args.mutants} holds no mutmut results: run mutmut first')
    lines = markdown(codes, read_justified())
    print('\n'.join(lines))
    if args.out:
        write_between_markers(args.out, lines)
    missing = below_target(codes, read_justified())
    for module, value in missing:
        print(f'{module}: {value:.1%} killed, below the {TARGET:.0%} target')
    return 1 if missing else 0


START, END = '<!-- mutation-report:start -->', '<!-- mutation-report:end -->'


def write_between_markers(page: Path, lines: Iterable[str]) -> None:
    """Replaces the report between the page's markers."""
    text = page.read_text()
    if START not in text or END not in text:
        raise ValueError(f'{page} lacks the markers {START} and {END}')
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(head + START + '\n' + '\n'.join(lines) + '\n' + END + tail)


if __name__ == '__main__':
    raise SystemExit(main())
