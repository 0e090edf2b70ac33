"""The one job executor: what a run turns into, whichever worker runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sd3pose.errors import NoPersonFoundError
from sd3pose.jobs.contract import JobStatus
from sd3pose.jobs.executor import QueuedJob, execute, execute_batch
from sd3pose.request import parse_request
from sd3pose.results import GenerationResult

REQUEST = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 2})


@dataclass
class Store:
    """A job store in memory: each job ends once."""

    cancels: dict[str, str] = field(default_factory=dict)
    ended: dict[str, tuple] = field(default_factory=dict)

    def report_step(self, job_id: str, step: int, total: int) -> None: ...

    def cancel_reason(self, job_id: str) -> str | None:
        return self.cancels.get(job_id)

    def complete(self, job_id: str, result: GenerationResult) -> bool:
        if job_id in self.ended:
            return False
        self.ended[job_id] = (JobStatus.COMPLETED, result)
        return True

    def fail(self, job_id: str, error: str, error_code: int) -> bool:
        if job_id in self.ended:
            return False
        self.ended[job_id] = (JobStatus.FAILED, error, error_code)
        return True


class Generator:
    def __init__(self, *outcomes) -> None:
        self.outcomes, self.runs = list(outcomes), 0

    def run(self, request, *, on_step=None, cancelled=None):
        self.runs += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def image() -> GenerationResult:
    return GenerationResult([b"jpeg"], "image/jpeg", [1], 64, 64, None, None, {})


def test_a_job_cancelled_before_it_runs_is_not_run() -> None:
    store, generator = Store(cancels={"a": "timed out after 1 s"}), Generator(image())
    outcome = execute(generator, QueuedJob("a", REQUEST), store)
    assert generator.runs == 0 and outcome.status is JobStatus.FAILED
    assert store.ended["a"] == (JobStatus.FAILED, "timed out after 1 s", 504)


def test_each_job_of_a_batch_gets_its_own_outcome_and_internals_stay_in_the_log(caplog) -> None:
    store = Store()
    generator = Generator(image(), NoPersonFoundError(), RuntimeError("CUDA error: an illegal memory access"))
    jobs = [QueuedJob(job_id, REQUEST) for job_id in ("ok", "nobody", "crash")]
    outcomes = execute_batch(generator, jobs, store)  # no run_batch: one after another
    assert [o.status for o in outcomes] == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.FAILED]
    assert store.ended["nobody"][2] == 400 and "no person found" in store.ended["nobody"][1]
    status, error, code = store.ended["crash"]
    assert code == 500 and "request id crash" in error and "CUDA" not in error
    assert "CUDA error" in caplog.text  # the operator sees what happened


def test_a_result_the_store_refuses_is_not_counted_as_completed() -> None:
    store = Store(ended={"a": (JobStatus.FAILED, "timed out", 504)})  # e.g. another run, or an expiry
    outcome = execute(Generator(image()), QueuedJob("a", REQUEST), store)
    assert outcome.status is None and store.ended["a"][0] is JobStatus.FAILED
