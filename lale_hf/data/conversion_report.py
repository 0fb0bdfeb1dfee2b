"""What a conversion produced: one summary per split and the report `convert_aras400k` returns."""

import dataclasses
from pathlib import Path


@dataclasses.dataclass
class SplitSummary:
    """What one converted split holds and where it came from."""

    split: str
    source: str
    member_prefix: str  # where images/ and masks/ were found in the zip or folder
    num_examples: int
    num_shards: int
    num_bytes: int
    parquet_bytes: int
    md5: str | None
    md5_checked_against: str
    skipped_unpaired: int
    skipped_duplicates: int
    ignored_members: int  # files outside images/ and masks/, hidden files, macOS metadata
    unknown_pixels: int
    stems_in_other_splits: int = 0  # kept with allow_split_overlap: stems that an evaluation split shares with this one


@dataclasses.dataclass
class ConversionReport:
    """Result of `convert_aras400k`."""

    output_dir: Path
    splits: dict[str, SplitSummary]
    procedural_sample: bool
    seconds: float
    cpu_seconds_main: float  # this process: checksums, indexing, card (and all the work when num_proc is 1)
    cpu_seconds_workers: float  # worker processes, summed

    @property
    def num_examples(self) -> int:
        return sum(summary.num_examples for summary in self.splits.values())

    def to_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "procedural_sample": self.procedural_sample,
            "seconds": round(self.seconds, 3),
            "cpu_seconds_main": round(self.cpu_seconds_main, 3),
            "cpu_seconds_workers": round(self.cpu_seconds_workers, 3),
            "num_examples": self.num_examples,
            "splits": {name: dataclasses.asdict(summary) for name, summary in self.splits.items()},
        }

    def format_table(self) -> str:
        header = (
            f"{'split':<11} {'pairs':>8} {'shards':>6} {'parquet MB':>10} {'skipped':>8} {'unknown px':>10}  source"
        )
        lines = [header, "-" * len(header)]
        for summary in self.splits.values():
            skipped = summary.skipped_unpaired + summary.skipped_duplicates
            lines.append(
                f"{summary.split:<11} {summary.num_examples:>8} {summary.num_shards:>6} "
                f"{summary.parquet_bytes / 1e6:>10.1f} {skipped:>8} {summary.unknown_pixels:>10}  {summary.source}"
            )
        shared = {split: s.stems_in_other_splits for split, s in self.splits.items() if s.stems_in_other_splits}
        if shared:
            lines.append(f"stems shared between splits (allowed by --allow_split_overlap): {shared}")
        rate = self.num_examples / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"{self.num_examples} pairs in {self.seconds:.1f} s ({rate:.0f} pairs/s) -> {self.output_dir}")
        return "\n".join(lines)
