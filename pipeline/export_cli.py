"""Command line of the export tool (`zip-purify-export`, `python jobs/export.py`): an output's purified images as
image files (pipeline.export). Loads neither torch nor Ray."""

from __future__ import annotations

import argparse
import sys
import typing

from pipeline.cli_common import (
    ConfigError,
    Parser,
    add_storage_options,
    credentials_advice,
    reader_may_go_away,
    storage_options,
)
from pipeline.errors import JobError
from pipeline.export import CLI_NAMES, IMAGE_FORMATS, MANIFESTS, OUTAGE_ROWS, ExportError, report_lines, run_export
from pipeline.progress import progress_bar
from pipeline.redaction import redact_uri_secrets
from pipeline.sources.ids import terminal_text
from pipeline.version import export_version_line

DESCRIPTION = """\
Write the purified images of a zip-purify output as image files, for tools that read files (torchvision's
ImageFolder, a training script's glob) rather than the output's Parquet rows.

Each row of OUTPUT/data/ becomes DIR/<id>, the id's folders kept: cats/a.jpg -> DIR/cats/a.png. A tar shard's,
zip archive's or Parquet file's rows lie in a folder named after it: shard-0001.tar/000123 -> DIR/shard-0001.tar/
000123.png, a.zip/x/y.jpg -> DIR/a.zip/x/y.png, t.parquet#3 -> DIR/t.parquet/3.png. A part of an id that could
leave DIR or is no file name ('..', '.', NUL, a backslash) is written escaped (%2E%2E, %2E, %00, %5C), never
followed, as is a name Windows refuses, so that DIR copies to Windows whole (a:b.jpg -> a%3Ab.png, CON.jpg ->
%43ON.png, dir./ -> dir%2E/), and a name over 255 bytes is shortened; two ids that would get one name (a.jpg and
a.png, names that differ only in case, a.jpg's a.png and the folder of a.png/b.jpg) are told apart (a.jpg.png).
DIR/manifest.csv says where each id went, with its row's other columns (label, caption, source, source_sha256, ...);
the last line names it under DIR as given (--to images: images/manifest.csv). --sidecars also writes an img2dataset
folder's or WebDataset key's sidecar files beside each image from its row (a.png with a.txt, a.cls, a.json), so that
DIR reads back into zip-purify, and into caption loaders, with the same columns.

Rejected inputs are not exported (they were not purified): the last line says how many there are, and
OUTPUT/rejects/ holds their ids and reasons.
"""

EXAMPLES = f"""\
examples:
  zip-purify-export --output ./purified --to ./purified-images
  zip-purify-export --output s3://bucket/clean/ --to /data/clean-images --format input --jpeg-quality 95
  zip-purify-export --output s3://bucket/clean/ --to s3://bucket/clean-files/ --resume   # finish a stopped export
  zip-purify-export --output ./purified --to ./purified-files --sidecars               # a.png with a.txt, a.cls, a.json
  zip-purify-export --output ./purified --to ./files --sidecars --caption-column caption  # a.txt from column caption
  zip-purify-export --output ./purified --to ./files --sidecars --label-column class     # a.cls from column class
  python jobs/export.py --help                                                         # the same tool

exit status:
  0    every purified image is in DIR (written now, or already there with --resume), and its manifest
  1    some could not be written, or a part file of data/ is damaged or could not be fetched (each named; the rest
       were exported), or the manifest could not be written (the images are in place: --resume writes it), or a
       stale sidecar could not be removed (named; the manifest lists it: --resume tries again), or the export
       stopped as the storage stayed down or refused every write ({OUTAGE_ROWS} rows in a row failed through every retry,
       or refused: no permission, read-only, full; --resume continues it)
  2    nothing was exported: a bad option, a missing OUTPUT or one that is not a zip-purify output, an unfinished
       one without --force, a DIR that is not empty without --overwrite or --resume, storage that refuses access
  130  interrupted (Ctrl-C): every file in DIR is whole, and the manifest is not written; --resume finishes it
"""


class _ExportParser(Parser):
    POSITIONAL_HINT = "the output and the folder are named: --output OUT --to DIR"

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("the following arguments are required"):  # said before any unrecognized word
            message += f" ({self.POSITIONAL_HINT})"
        super().error(message)


def _int_from(low: int, high: int | None = None) -> typing.Callable[[str], int]:
    """An option's whole number from `low` to `high`, refused by the option's name (the export's own check names the
    Python argument: "workers must be at least 1")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not {f'from {low} to {high}' if high else f'at least {low}'}")
        return value

    return parse


def build_parser(prog: str = "zip-purify-export") -> argparse.ArgumentParser:
    """The export's parser; `prog`: the command the user ran (`python jobs/export.py`), named in its usage and errors."""
    p = _ExportParser(prog=prog, description=DESCRIPTION, epilog=EXAMPLES, allow_abbrev=False,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=export_version_line(),
                   help="print the export's version with those of pyarrow, fsspec, Pillow and Python (what it reads "
                        "Parquet, reaches storage and re-encodes images with; it loads neither torch nor Ray), and exit")
    p.add_argument("--output", required=True, metavar="OUT",
                   help="the zip-purify output to export: the folder or URI a run's --output named (it holds "
                        "_job.json, data/)")
    p.add_argument("--to", required=True, metavar="DIR",
                   help="the folder or URI to write the image files in (made when missing; must be empty unless "
                        "--overwrite or --resume)")
    p.add_argument("--format", choices=IMAGE_FORMATS, default="png",
                   help="png: the stored PNG bytes as they are, under .png names (lossless, nothing re-encoded; the "
                        "default); input: each image re-encoded to its id's own extension (cats/a.jpg stays "
                        "cats/a.jpg; a tar key or Parquet row takes its input's format, original_format), for loaders "
                        "that key on names. Re-encoding to JPEG is LOSSY (--jpeg-quality), to GIF keeps 256 colours, "
                        "to .pgm/.pbm grey / 1-bit; .png, .bmp, .tif, .ppm and .webp (written lossless) keep the pixels")
    p.add_argument("--jpeg-quality", type=_int_from(1, 100), default=95, metavar="Q",
                   help="JPEG quality from 1 to 100 for --format input (default 95)")
    p.add_argument("--manifest", choices=MANIFESTS, default="csv",
                   help="DIR/manifest.csv (default) or DIR/manifest.jsonl: one line per exported image, its id, path "
                        "(relative to DIR) and every other column of its row but the image and columns of bytes (with "
                        "--sidecars, then sidecar_files: the names of its sidecar files); "
                        "written once the export is done; none: no manifest")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="write into a DIR that is not empty, replacing files of the same names (nothing else "
                               "in it is touched or deleted, but, with --sidecars, the stale sidecars the earlier "
                               "export's manifest lists as its own, and the "
                               "partial files an export killed outright left, as with --resume; without --sidecars, "
                               "the sidecar files an earlier --sidecars export's manifest lists stay, listed in the "
                               "new manifest too, for a later --sidecars export to remove the stale ones)")
    existing.add_argument("--resume", action="store_true",
                          help="finish an export into DIR: a file already there with the bytes it would be written with "
                               "is kept (off the local disk told by DIR's one listing: its size, and its checksum where the "
                               "store lists one, S3's ETag, GCS's md5Hash; one of that size with none is read back and "
                               "compared), the others are written; the "
                               "hidden partial files an export killed outright (SIGKILL) left, .tmp-<a uuid4's 32 hex>-<a "
                               "name it writes>.tmp, are removed first, with a note (not while another export writes DIR)")
    p.add_argument("--sidecars", action="store_true",
                   help="write beside each image its sidecar files from its row, as img2dataset and WebDataset folders hold "
                        "them: DIR/a.png with a.txt (the txt caption, or --caption-column's), a.cls (the label, or "
                        "--label-column's) and a.json (every other column from the input: a .json's keys, other "
                        "sidecars, a metadata row's, a Parquet input's; input_id as \"id\" again), so that DIR reads "
                        "back into the job with the same columns; never the job's own columns (source, width, ...; "
                        "those are in the manifest), nor a null value (no file, no key; but a column null in every "
                        "row, img2dataset's error_message, is a null key of each .json), nor columns of bytes. Where "
                        "two images would share a stem (a.jpg and a.png with --format input), each has its whole "
                        "name's: a.png.txt. With --overwrite or --resume, an image's .txt, .cls or .json its row has no "
                        "value for is removed where the manifest in DIR (an earlier --sidecars export's) lists it in its "
                        "sidecar_files column as a file it wrote beside that image, and kept as the user's own file "
                        "where none does (off the local disk DIR is listed once, and only those "
                        "there are deleted), and counted in the last line")
    p.add_argument("--caption-column", default="txt", metavar="NAME",
                   help="with --sidecars, the column whose text is each image's .txt (default txt, a folder's or "
                        "WebDataset's .txt captions): caption for img2dataset's Parquet, text, prompt. Not txt, it stays "
                        "a key of the .json too, so that DIR read back into the job has that column again (and a txt "
                        "column beside it, the same text). Refused, naming the columns the output has, where it has no "
                        "such text column, or has a txt column as well")
    p.add_argument("--label-column", default="label", metavar="NAME",
                   help="with --sidecars, the column whose value is each image's .cls (default label, a folder's or "
                        "WebDataset's .cls labels, --labels-from-folders'): class, class_id, target, a whole number or "
                        "text. Not label, it stays a key of the .json too, so that DIR read back into the job has that "
                        "column again (and a label column beside it, the same value). Refused, naming the columns the "
                        "output has, where it has no such column, or has a label column as well")
    p.add_argument("--force", action="store_true",
                   help="export an output that is not complete (its run stopped, failed or is running now): the rows "
                        "it holds now")
    p.add_argument("--workers", type=_int_from(1), default=8, metavar="N",
                   help="files written at once (default 8; more helps on object storage)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (in a log: no line a minute)")
    add_storage_options(p)
    return p


def main(argv: list[str] | None = None, prog: str = "zip-purify-export") -> int:
    """The command line; returns the exit status (0 all exported, 1 some not, 2 could not start, 130 interrupted).
    `prog`: how the user ran it (`build_parser`)."""
    args = build_parser(prog).parse_args(argv)
    try:
        so = storage_options({}, args.s3_endpoint, args.anon, args.storage_option, "")
        existing = "overwrite" if args.overwrite else "resume" if args.resume else "refuse"

        def bar(total: int) -> typing.Any:
            return progress_bar(total, "export", "img")

        def damaged(line: str) -> None:
            print(f"warning: {_shown(line, args)}", file=sys.stderr, flush=True)

        # export_images, its error for a DIR that is not empty naming --resume and --overwrite, not `existing`
        report = run_export(CLI_NAMES, args.output, args.to, storage_options=so, image_format=args.format,
                            jpeg_quality=args.jpeg_quality, manifest=args.manifest, existing=existing,
                            force=args.force, workers=args.workers, progress=None if args.no_progress else bar,
                            on_damaged=damaged, sidecars=args.sidecars, caption_column=args.caption_column,
                            label_column=args.label_column)
    except KeyboardInterrupt:
        print("interrupted: every file written is whole; run the same command with --resume to finish (the manifest "
              "is written at the end)", file=sys.stderr)
        return 130
    except (ExportError, ConfigError) as err:
        print(f"error: {_shown(err, args)}{credentials_advice(err)}", file=sys.stderr)
        return 2
    except (JobError, OSError, ValueError) as err:  # storage that refuses access, not found, ...
        print(f"error: {_shown(err, args)}{credentials_advice(err)}", file=sys.stderr)
        return 2
    lines = [_shown(line, args) for line in report_lines(report)]  # they name --output and --to
    for line in lines[:-1]:
        print(line, file=sys.stderr)
    with reader_may_go_away():
        print(lines[-1])
    return 0 if report.ok else 1


def _shown(err: BaseException | str, args: argparse.Namespace) -> str:
    """An error or a line as printed: one line, without the credentials of a URI given (a presigned URL's signature,
    an FTP password)."""
    text = str(err)
    for uri in (args.output, args.to):
        text = redact_uri_secrets(text, uri)
    return terminal_text(text)


if __name__ == "__main__":  # python -m pipeline.export_cli: where the console script is not on PATH
    sys.exit(main(prog="python -m pipeline.export_cli"))
