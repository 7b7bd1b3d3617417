#!/usr/bin/env python3
"""Build the bundled demo corpus from Debian packages of translated documentation.

Why: the project needs real multilingual text whose *claimed* language is known
but not always true. Translated docs are ideal: the Debian Administrator's
Handbook (26 locales) and the LibreOffice help (6 languages here) ship many
paragraphs untranslated (still English) or partly translated, exactly what a
language-ID stage must catch. So text is kept as shipped; nothing is cleaned
or filtered except tags, entities, runs of HTML whitespace and empty paragraphs.
Because every locale is generated from the same sources, paragraphs can also
be aligned across languages into parallel sets used for evaluation.

Outputs (deterministic: same .deb files -> same bytes), under --out (default:
the directory of this script):
  demo/<source>-<lang>.jsonl.zst  one JSON doc per line, zstd level 19
  demo/SOURCES.json               package, version, file name, sha256 of each .deb
  parallel/<source>.{train,eval}.parquet  aligned segments, one column per lang
  LICENSES/                       copyright files of the packages + licence texts

Usage: python data/build_demo_corpus.py [--debs DIR] [--out DIR] [--lo-keep K]
Needs: apt-get and dpkg-deb (Debian/Ubuntu), Python 3.11, pyarrow, zstandard.
"""

import argparse
import hashlib
import html.parser
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

HANDBOOK = "debian-handbook"
LOHELP = "libreoffice-help"
PACKAGES = [HANDBOOK] + [f"{LOHELP}-{v}" for v in ("en-us", "fr", "de", "es", "zh-cn", "ru")]
PARALLEL = {LOHELP: ["en", "fr", "de", "es", "zh", "ru"], HANDBOOK: ["en", "fr", "de", "es", "zh", "ru", "ar"]}
# The handbook's zh-CN and zh-TW both map to ISO 639-1 "zh": zh-CN gets the file
# name "<source>-zh", zh-TW keeps its locale ("<source>-zh-TW"); both claim "zh".
PRIMARY_LOCALE = {"zh": "zh-CN"}
EVAL_BYTE = 26  # sha1(English text)[0] < 26 -> eval split (26/256 = 10.2%)
# Size cap (all of data/ must stay < 20 MB): keep a LibreOffice help file only if
# sha1(its path)[0] < LO_KEEP. Same files in every language, all modules sampled.
LO_KEEP = 160
BLOCK = {
    "br",
    "div",
    "p",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "pre",
    "table",
    "tr",
    "td",
    "th",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
WS = re.compile(r"[ \t\n\r\f]+")  # HTML whitespace only: keep U+00A0 etc. as shipped


class Extractor(html.parser.HTMLParser):
    """Collect paragraph texts: handbook <div class="para"> (keyed by index within
    the file) or LibreOffice <p id>/<hN id> (keyed by id, '#2'.. for repeats)."""

    def __init__(self, mode):
        super().__init__(convert_charrefs=True)
        self.mode, self.out, self.buf, self.depth, self.tag, self.key = mode, [], None, 0, None, None
        self.seen, self.n = {}, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.buf is not None:
            self.depth += tag == "div" and self.mode == HANDBOOK
            if tag in BLOCK:
                self.buf.append(" ")
        elif self.mode == HANDBOOK and tag == "div" and "para" in (a.get("class") or "").split():
            self.buf, self.depth, self.tag = [], 1, "div"
        elif self.mode == LOHELP and (tag == "p" or tag in HEADINGS) and a.get("id"):
            n = self.seen[a["id"]] = self.seen.get(a["id"], 0) + 1
            self.buf, self.tag, self.key = [], tag, a["id"] + (f"#{n}" if n > 1 else "")

    def handle_endtag(self, tag):
        if self.buf is None:
            return
        if tag in BLOCK:
            self.buf.append(" ")
        if self.mode == HANDBOOK and tag == "div":
            self.depth -= 1
            done = self.depth == 0
        else:
            done = tag == self.tag
        if done:
            text = WS.sub(" ", "".join(self.buf)).strip()
            # handbook paragraphs are indexed before dropping empties, so an empty
            # paragraph does not shift the indices used for alignment
            key = self.n if self.mode == HANDBOOK else self.key
            self.n += 1
            if text:
                self.out.append((key, text))
            self.buf = None

    def handle_data(self, data):
        if self.buf is not None:
            self.buf.append(data)


def extract(path, mode):
    p = Extractor(mode)
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p.out


def get_debs(debs_dir):
    """Return {package: .deb path}, running `apt-get download` for missing ones."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not list(debs_dir.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs_dir, check=True)
    found = {}
    for pkg in PACKAGES:
        hits = sorted(debs_dir.glob(f"{pkg}_*.deb"))
        if len(hits) != 1:
            sys.exit(f"expected exactly one {pkg}_*.deb in {debs_dir}, found {len(hits)}")
        found[pkg] = hits[0]
    return found


def deb_info(deb):
    def field(f):
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), f], check=True, capture_output=True, text=True
        ).stdout.strip()

    return {
        "package": field("Package"),
        "version": field("Version"),
        "file": deb.name,
        "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "size": deb.stat().st_size,
    }


def hash_below(s, threshold):
    return hashlib.sha1(s.encode()).digest()[0] < threshold


def collect(root, lo_keep):
    """Yield (source, lang, locale, {(file, para): text} in document order)."""
    hb = root / "usr/share/doc/debian-handbook/html"
    for d in sorted(x for x in hb.iterdir() if x.is_dir() and "-" in x.name and x.name[0].islower()):
        docs = {(f.name, k): t for f in sorted(d.glob("*.html")) for k, t in extract(f, HANDBOOK)}
        yield HANDBOOK, d.name.split("-")[0], d.name, docs
    lo = root / "usr/share/libreoffice/help"
    for d in sorted(x for x in lo.iterdir() if (x / "text").is_dir()):
        files = sorted(
            (f for f in d.glob("text/**/*.html") if hash_below(f.relative_to(d).as_posix(), lo_keep)),
            key=lambda f: f.relative_to(d).as_posix(),
        )
        docs = {(f.relative_to(d).as_posix(), k): t for f in files for k, t in extract(f, LOHELP)}
        yield LOHELP, d.name.split("-")[0].lower(), d.name, docs


def write_jsonl_zst(path, source, lang, locale, docs):
    lines = [
        json.dumps(
            {"text": t, "lang": lang, "source": source, "file": f, "para": k, "locale": locale}, ensure_ascii=False
        )
        for (f, k), t in docs.items()
    ]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
    return len(lines)


def write_parallel(outdir, source, by_lang):
    """Align on (file, para); the handbook keeps only files whose paragraph count
    is equal in every language. Rows identical in all languages are dropped, and
    so are repeats of an earlier row (LibreOffice repeats many paragraphs across
    files). Split by hash of the English text, so a segment never straddles."""
    langs = PARALLEL[source]
    tables = [by_lang[l] for l in langs]
    keys = set(tables[0]).intersection(*tables[1:])
    stats = {}
    if source == HANDBOOK:
        files = sorted({f for f, _ in tables[0]})
        count = {l: {} for l in langs}
        for l, t in zip(langs, tables):
            for f, _ in t:
                count[l][f] = count[l].get(f, 0) + 1
        ok = {f for f in files if len({count[l].get(f) for l in langs}) == 1}
        keys = {k for k in keys if k[0] in ok}
        stats = {"files_total": len(files), "files_aligned": len(ok)}
    rows, seen, identical, repeats = {"train": [], "eval": []}, set(), 0, 0
    for f, k in sorted(keys):
        texts = tuple(t[(f, k)] for t in tables)
        if len(set(texts)) == 1:
            identical += 1
            continue
        if texts in seen:
            repeats += 1
            continue
        seen.add(texts)
        split = "eval" if hash_below(texts[0], EVAL_BYTE) else "train"
        rows[split].append([f"{f}#{k}", *texts])
    for split, rs in rows.items():
        cols = list(zip(*rs)) if rs else [[] for _ in range(len(langs) + 1)]
        table = pa.table({n: pa.array(c, pa.string()) for n, c in zip(["id"] + langs, cols)})
        pq.write_table(
            table,
            outdir / f"{source}.{split}.parquet",
            compression="zstd",
            compression_level=19,
            use_dictionary=False,
            data_page_size=1 << 26,
        )
    stats.update(
        {
            "keys_all_langs": len(keys),
            "dropped_identical": identical,
            "dropped_repeats": repeats,
            "train": len(rows["train"]),
            "eval": len(rows["eval"]),
        }
    )
    return stats


def write_licenses(root, outdir):
    outdir.mkdir(parents=True, exist_ok=True)
    doc = root / "usr/share/doc"
    shutil.copyfile(doc / "debian-handbook/copyright", outdir / "debian-handbook.copyright")
    shutil.copyfile(doc / "libreoffice-help-en-us/copyright", outdir / "libreoffice-help.copyright")
    # the CC-BY-SA-3.0 text only exists inside the handbook's copyright file
    stanza = (doc / "debian-handbook/copyright").read_text().split("License: CC-BY-SA-3.0\n", 1)[1]
    lines = [l[1:] if l.startswith(" ") else l for l in stanza.split("\n")]
    (outdir / "CC-BY-SA-3.0").write_text("\n".join("" if l == "." else l for l in lines).strip() + "\n")
    for name in ("GPL-2", "MPL-2.0", "Apache-2.0"):
        src = Path("/usr/share/common-licenses") / name
        if src.exists():
            shutil.copyfile(src, outdir / name)
        else:
            print(f"warning: {src} missing, LICENSES/{name} not refreshed", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", type=Path, help="dir with (or to download) the .deb files; default: a temp dir")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--lo-keep", type=int, default=LO_KEEP, help="LibreOffice file sample, 1-256 (256: all)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo-corpus-") as tmp:
        debs = get_debs(args.debs or Path(tmp) / "debs")
        root = Path(tmp) / "root"
        for deb in debs.values():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        demo, par = args.out / "demo", args.out / "parallel"
        for d in (demo, par):
            d.mkdir(parents=True, exist_ok=True)
        sources = [deb_info(debs[p]) for p in PACKAGES]
        (demo / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")
        parallel, counts = {HANDBOOK: {}, LOHELP: {}}, []
        for source, lang, locale, docs in collect(root, args.lo_keep):
            name = lang if PRIMARY_LOCALE.get(lang, locale) == locale else locale
            n = write_jsonl_zst(demo / f"{source}-{name}.jsonl.zst", source, lang, locale, docs)
            counts.append((source, name, locale, n))
            if lang in PARALLEL[source] and name == lang:
                parallel[source][lang] = docs
        stats = {s: write_parallel(par, s, parallel[s]) for s in (LOHELP, HANDBOOK)}
        write_licenses(root, args.out / "LICENSES")
    print("| source | file lang | locale | docs | bytes |\n|---|---|---|---:|---:|")
    for source, name, locale, n in counts:
        size = (demo / f"{source}-{name}.jsonl.zst").stat().st_size
        print(f"| {source} | {name} | {locale} | {n} | {size} |")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
