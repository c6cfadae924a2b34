"""The documentation cannot rot: the Sphinx site builds with warnings as errors (broken links
and anchors between pages, missing figures, bad docstrings fail it), the README's and the
pages' Python snippets run, the README's links and anchors resolve, and the changelog names
the package's version."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_module

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def snippets(language: str):
    """(page, index, code) of every fenced block in ``language`` of the README and docs."""
    for page in PAGES:
        blocks = [m.group(2) for m in FENCE.finditer(page.read_text()) if m.group(1) == language]
        for index, code in enumerate(blocks):
            yield pytest.param(page, code, id=f'{page.relative_to(REPO)}#{index}')


def test_docs_build_with_warnings_as_errors(tmp_path):
    require_module('sphinx')
    result = subprocess.run([sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b',
                             'html', str(REPO / 'docs'), str(tmp_path / 'html')],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / 'html' / 'api.html').read_text().count('ls_conv2d') > 3


@pytest.mark.parametrize('page,code', list(snippets('python')))
def test_python_snippet_runs(page, code, tmp_path):
    """A config snippet (it names a ``_base_``) loads with mmengine and its model builds with
    mmdet; any other snippet runs, its asserts holding."""
    if '_base_' in code:
        require_module('mmdet')
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        register_all_modules()
        config = tmp_path / 'snippet_config.py'
        config.write_text(code)
        cfg = Config.fromfile(str(config))
        assert MODELS.build(cfg.model) is not None
        return
    exec(compile(code, f'{page.name} snippet', 'exec'), {'__name__': '__snippet__'})


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and myst's heading anchors) give a Markdown heading."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def anchors(page: Path) -> set:
    text = FENCE.sub('', page.read_text())
    return {github_anchor(m.group(1)) for m in re.finditer(r'^#+ (.*)$', text, re.M)}


STUDY = REPO / 'projects' / 'lsconv_study'


@pytest.mark.parametrize('page', [REPO / 'README.md', REPO / 'CHANGELOG.md',
                                  REPO / 'configs' / 'README.md', STUDY / 'README.md',
                                  STUDY / 'results.md', STUDY / 'datasets.md',
                                  STUDY / 'configs' / 'README.md'],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    """Every relative link and image of the page names a file of the repository, and every
    anchor a heading of its target page."""
    broken = []
    for target in LINK.findall(FENCE.sub('', page.read_text())):
        if re.match(r'[a-z]+://', target):
            continue
        path, _, anchor = target.partition('#')
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and anchor not in anchors(resolved):
            broken.append(target)
    assert not broken, broken


def test_changelog_names_the_version():
    from mmlstride.version import __version__
    releases = re.findall(r'^## \[([^\]]+)\]', (REPO / 'CHANGELOG.md').read_text(), re.M)
    assert releases and releases[0] == __version__, releases


def test_readme_is_short_and_speaks_of_the_product():
    """At most 250 lines, and no development history (issues, sessions) in the README or the
    pages."""
    readme = (REPO / 'README.md').read_text()
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        assert not re.search(r'\b(issue|session)s?\b', page.read_text(), re.I), page.name


def combinations_table(page: Path) -> str:
    """The table of tested torch, Python, mmcv and mmdet combinations on ``page``."""
    tables = re.findall(r'^\| torch \| Python \|.*?(?=\n\n)', page.read_text(), re.S | re.M)
    assert len(tables) == 1, page
    return tables[0]


def test_readme_and_get_started_list_the_same_tested_combinations():
    """The README's table of tested combinations is the get-started page's, and each torch in
    it that CI tests is one that .ci/run runs."""
    table = combinations_table(REPO / 'README.md')
    assert table == combinations_table(REPO / 'docs' / 'get_started.md')
    ci = (REPO / '.ci' / 'run').read_text()
    for version in re.findall(r'^\| (\d+\.\d+\.\d+) .*every CI run', table, re.M):
        assert version in ci, version
