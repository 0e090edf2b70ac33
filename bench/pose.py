"""Warm pose detection time on a 1024x1024 photo (body + hands + face), on this machine's CPU.

Reference in the same run: MediaPipe's stock Holistic solution (static_image_mode, one person,
no multi-person search) on the same photo. Runs alternate A/B so load from other processes hits
both alike; medians are reported with their ratio.

    .venv/bin/python bench/pose.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image
from skimage import data

TARGET_MS = 150.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each (after 2 warm-up runs)")
    args = parser.parse_args()

    import mediapipe as mp

    from sd3pose.pose import get_detector

    photo = Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.BICUBIC)
    array = np.asarray(photo)
    detector = get_detector()
    stock = mp.solutions.holistic.Holistic(static_image_mode=True, model_complexity=1)

    def ours() -> object:
        return detector.detect(photo)

    def reference() -> object:
        return stock.process(array)

    for _ in range(2):
        ours()
        reference()
    timings: dict[str, list[float]] = {"sd3pose": [], "stock holistic": []}
    # CPU time of this process (all its threads): less sensitive than wall time to other load on the box.
    cpu: dict[str, list[float]] = {"sd3pose": [], "stock holistic": []}
    for _ in range(args.runs):
        for name, run in (("sd3pose", ours), ("stock holistic", reference)):
            started, started_cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.process_time() - started_cpu) * 1000)

    pose = ours()
    person = pose.people[0]
    found = "body" + (", face" if person.face is not None else "")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"photo 1024x1024 (astronaut, upscaled); {len(pose.people)} person, parts found: {found}")
    for name, values in timings.items():
        spread = f"min {min(values):.1f}, max {max(values):.1f}, n={len(values)}"
        cpu_median = statistics.median(cpu[name])
        print(f"  {name:15s} median {medians[name]:6.1f} ms wall ({spread}), {cpu_median:6.1f} ms CPU")
    print(f"  ratio sd3pose / stock holistic: {medians['sd3pose'] / medians['stock holistic']:.2f}")
    verdict = "meets" if medians["sd3pose"] < TARGET_MS else "MISSES"
    print(f"  target: median under {TARGET_MS:.0f} ms -> {verdict}")


if __name__ == "__main__":
    main()
