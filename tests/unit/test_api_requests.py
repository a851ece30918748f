"""The operator's lean API requests (kube.ApiRequests) and the watch's line reader, against fakes of the wire."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException, Configuration

from disttrain_operator.informer import _events
from disttrain_operator.kube import MERGE_PATCH, ApiRequests, collection, item


class FakeResponse:
    def __init__(self, status: int, data: bytes, chunks: list[bytes] | None = None) -> None:
        self.status, self.data, self.reason, self.headers = status, data, "Reason", {}
        self.chunks = chunks or []

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from self.chunks


class FakePool:
    def __init__(self, response: FakeResponse) -> None:
        self.response, self.calls = response, []

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        self.calls.append((method, url, kwargs))
        return self.response


def requests_with(response: FakeResponse, token: str | None = None) -> tuple[ApiRequests, FakePool]:
    configuration = Configuration(host="https://api.example:6443")
    if token:
        configuration.api_key = {"authorization": f"Bearer {token}"}
    requests = ApiRequests(ApiClient(configuration))
    requests.pool = pool = FakePool(response)  # type: ignore[assignment]
    return requests, pool


def test_paths_name_each_kind_the_way_the_api_server_serves_it() -> None:
    assert collection("Pod", "team-a") == "/api/v1/namespaces/team-a/pods"
    assert collection("Service", "team-a") == "/api/v1/namespaces/team-a/services"
    assert collection("Event", "team-a") == "/api/v1/namespaces/team-a/events"
    assert collection("NetworkPolicy", "team-a") == "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies"
    jobs = "/apis/disttrain.io/v1alpha1/namespaces/team-a/disttrainjobs"
    assert item("DistTrainJob", "team-a", "mnist") == f"{jobs}/mnist"


def test_a_request_carries_the_token_the_json_body_and_its_content_type() -> None:
    requests, pool = requests_with(FakeResponse(200, b'{"metadata": {"resourceVersion": "9"}}'), token="s3cret")
    answer = requests("PATCH", item("DistTrainJob", "ns", "j") + "/status", body={"status": {"state": "Running"}},
                      content_type=MERGE_PATCH, timeout=7.0)
    assert answer == {"metadata": {"resourceVersion": "9"}}
    method, url, kwargs = pool.calls[0]
    assert method == "PATCH"
    assert url == "https://api.example:6443/apis/disttrain.io/v1alpha1/namespaces/ns/disttrainjobs/j/status"
    assert kwargs["headers"]["authorization"] == "Bearer s3cret"
    assert kwargs["headers"]["Content-Type"] == MERGE_PATCH
    assert kwargs["body"] == b'{"status":{"state":"Running"}}'
    assert kwargs["timeout"].total == 7.0 and kwargs["preload_content"] is False


def test_a_query_is_encoded_and_a_get_has_no_body() -> None:
    requests, pool = requests_with(FakeResponse(200, b'{"items": []}'))
    assert requests("GET", collection("Pod", "ns"), query={"labelSelector": "disttrain.io/job", "limit": 5}) == {
        "items": []}
    _, url, kwargs = pool.calls[0]
    assert url.endswith("/api/v1/namespaces/ns/pods?labelSelector=disttrain.io%2Fjob&limit=5")
    assert kwargs["body"] is None and "Content-Type" not in kwargs["headers"]


def test_a_refusal_raises_api_exception_with_the_servers_status_and_message() -> None:
    body = b'{"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": "pods \\"p\\" already exists"}'
    requests, _ = requests_with(FakeResponse(409, body))
    with pytest.raises(ApiException) as raised:
        requests("POST", collection("Pod", "ns"), body={"metadata": {"name": "p"}}, decode=False)
    assert raised.value.status == 409 and "already exists" in raised.value.body


def test_an_answer_not_asked_for_is_not_parsed() -> None:
    requests, _ = requests_with(FakeResponse(201, b"not json, and nobody reads it"))
    assert requests("POST", collection("Pod", "ns"), body={}, decode=False) is None


def test_the_watch_reader_joins_lines_split_across_chunks() -> None:
    events = [b'{"type": "ADDED", "object": {"metadata": {"name": "w\xc3\xa9"}}}',
              b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}']
    wire = events[0] + b"\n" + events[1] + b"\n\n"
    chunks = [wire[:20], wire[20:41], wire[41:42], wire[42:]]  # one split inside the two-byte "é"
    assert list(_events(FakeResponse(200, b"", chunks))) == [
        {"type": "ADDED", "object": {"metadata": {"name": "wé"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
    ]
