"""Benchmark loaders: files -> typed examples. Every loader raises DataError naming the file and row."""
from .common import SkipLog, data_dir, resolve_data_path
from .stereoset import (
    StereoSetExample,
    load_stereoset,
    load_stereoset_csv_dir,
    load_stereoset_json,
    split_x_y,
)
from .crows_pairs import CrowsPair, load_crows_pairs
from .bbq import BBQExample, load_bbq
from .text import load_text_lines

__all__ = [
    "SkipLog", "data_dir", "resolve_data_path",
    "StereoSetExample", "load_stereoset", "load_stereoset_csv_dir", "load_stereoset_json", "split_x_y",
    "CrowsPair", "load_crows_pairs", "BBQExample", "load_bbq", "load_text_lines",
]
