"""google-cloud-aiplatform's ``vertexai`` SDK, unmodified: ``vertexai.init`` with an ``http://`` endpoint, the REST
transport and a token credential holding the key, then ``sft.train``, ``SupervisedTuningJob`` and
``GenerativeModel`` as Vertex AI's documentation shows them.

``sft.train(adapter_size=16)`` goes out as the proto code 4 and ``epochs`` as a string: the job must be rank
16 and 3 epochs on the native path. The tuned model answers through ``GenerativeModel(tuned_model_endpoint_name)``.

    .venv/bin/python -m pytest tests/clients/test_vertexai.py -x -q
"""

from __future__ import annotations

import pytest
from client_helpers import TINY_EPOCHS, TINY_RATE, wait_for

vertexai = pytest.importorskip("vertexai", reason="google-cloud-aiplatform is not installed (scripts/install.sh test)")
from google.oauth2.credentials import Credentials  # noqa: E402
from vertexai.generative_models import GenerationConfig, GenerativeModel  # noqa: E402
from vertexai.tuning import sft  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # the SDK's deprecation notices for these modules
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]
GREEDY = GenerationConfig(temperature=0, max_output_tokens=12)


@pytest.fixture(scope="module")
def initialised(server, key) -> None:
    vertexai.init(
        project="my-project",
        location="us-central1",
        api_endpoint=server.url,
        api_transport="rest",
        credentials=Credentials(token=key),
    )


@pytest.fixture(scope="module")
def job(server, key, initialised):
    tuning = sft.train(
        source_model="tiny",
        train_dataset="classify_gemini.jsonl",  # a dataset under the server's data root
        epochs=TINY_EPOCHS,
        adapter_size=16,
        learning_rate_multiplier=TINY_RATE,
        tuned_model_display_name="vertexai tuned",
    )
    assert tuning.resource_name.startswith("projects/my-project/locations/us-central1/tuningJobs/")
    job_id = tuning.resource_name.rsplit("/", 1)[1]
    native = server.client.get(f"/v1/tuningJobs/{job_id}", headers=server.headers(key)).json()
    hyper = native["supervisedTuningSpec"]["hyperParameters"]
    assert hyper["adapterSize"] == 16 and hyper["epochCount"] == TINY_EPOCHS  # code 4 and "3", translated

    def ended() -> bool:
        tuning.refresh()
        return tuning.has_ended

    wait_for(ended, f"{tuning.resource_name} ends")
    assert tuning.has_succeeded, tuning.error
    return tuning


def test_train_refresh_and_names(job) -> None:
    job_id = job.resource_name.rsplit("/", 1)[1]
    assert job.tuned_model_name == f"projects/my-project/locations/us-central1/models/{job_id}"
    assert job.tuned_model_endpoint_name == f"projects/my-project/locations/us-central1/endpoints/{job_id}"
    again = sft.SupervisedTuningJob(job.resource_name)
    assert again.has_succeeded and again.tuned_model_endpoint_name == job.tuned_model_endpoint_name
    stats = again.tuning_data_statistics.supervised_tuning_data_stats
    assert stats.tuning_dataset_example_count == 10 and stats.total_billable_token_count > 0


def test_generate_stream_and_count_on_the_tuned_model(job) -> None:
    model = GenerativeModel(job.tuned_model_endpoint_name, system_instruction="Route the ticket.")
    answer = model.generate_content("my card never arrived", generation_config=GREEDY)
    assert answer.candidates[0].finish_reason.name in ("STOP", "MAX_TOKENS")
    assert answer.usage_metadata.candidates_token_count >= 1
    chunks = list(model.generate_content("my card never arrived", generation_config=GREEDY, stream=True))
    assert "".join(c.candidates[0].content.parts[0].text for c in chunks) == answer.text
    counted = model.count_tokens("my card never arrived")
    assert counted.total_tokens == answer.usage_metadata.prompt_token_count


def test_base_model_by_publisher_path(initialised, job) -> None:
    """``GenerativeModel("tiny")`` calls publishers/google/models/tiny; a data-root model is not servable, so the
    answer is Vertex's 404, raised by the SDK as NotFound (the path exists: no 405)."""
    from google.api_core import exceptions

    with pytest.raises(exceptions.NotFound):
        GenerativeModel("no-such-model").generate_content("hello", generation_config=GREEDY)


def test_unknown_adapter_size_is_refused(server, key) -> None:
    body = {
        "baseModel": "tiny",
        "supervisedTuningSpec": {"trainingDatasetUri": "classify_gemini.jsonl", "hyperParameters": {"adapterSize": 9}},
    }
    refused = server.client.post("/v1beta1/projects/p/locations/l/tuningJobs", json=body, headers=server.headers(key))
    assert refused.status_code == 400 and "adapterSize" in refused.text
