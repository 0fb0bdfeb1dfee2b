"""Worker processes of the converter and of the sample generator."""

import multiprocessing


def process_context():
    """fork where available (workers start without re-importing lale_hf); elsewhere spawn, the only safe choice."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
