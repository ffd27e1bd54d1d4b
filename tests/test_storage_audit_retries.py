"""Storage audit: which errors are retried, how long the retries wait, and that tests never really wait.

Errors are built the way s3fs raises them (a botocore ClientError translated by s3fs.errors.translate_boto_error,
the ClientError kept as the cause), since that is what the job's storage calls see."""

from __future__ import annotations

import errno

import aiohttp
import botocore.exceptions as boto
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError
from s3fs.errors import translate_boto_error

from pipeline import storage


def _client_error(code: str, status: int, message: str, op: str = "GetObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


def _as_s3fs_raises(err: ClientError) -> BaseException:
    try:
        try:
            raise err
        except ClientError as e:
            raise translate_boto_error(e) from e
    except Exception as translated:  # noqa: BLE001 - the translated error is the value
        return translated


TRANSIENT_ANSWERS = {
    "SlowDown 503": ("SlowDown", 503, "Please reduce your request rate."),
    "ServiceUnavailable 503": ("ServiceUnavailable", 503, "Please reduce your request rate."),
    "HEAD 503": ("503", 503, "Service Unavailable"),
    "InternalError 500": ("InternalError", 500, "We encountered an internal error. Please try again."),
    "HEAD 500": ("500", 500, "Internal Server Error"),
    "HEAD 502": ("502", 502, "Bad Gateway"),
    "HEAD 504": ("504", 504, "Gateway Timeout"),
    "Throttling": ("Throttling", 400, "Rate exceeded"),
    "TooManyRequests 429": ("TooManyRequests", 429, "Too Many Requests"),
    "RequestLimitExceeded": ("RequestLimitExceeded", 503, "Request limit exceeded."),
    "RequestTimeout": ("RequestTimeout", 400, "Your socket connection to the server was not read from or written to."),
    "OperationAborted 409": ("OperationAborted", 409, "A conflicting conditional operation is in progress."),
}
PERMANENT_ANSWERS = {
    "NoSuchKey 404": ("NoSuchKey", 404, "The specified key does not exist."),
    "HEAD 404": ("404", 404, "Not Found"),
    "AccessDenied 403": ("AccessDenied", 403, "Access Denied"),
    "HEAD 403": ("403", 403, "Forbidden"),
    "NoSuchBucket": ("NoSuchBucket", 404, "The specified bucket does not exist"),
    "InvalidAccessKeyId": ("InvalidAccessKeyId", 403, "The AWS Access Key Id you provided does not exist."),
    "ExpiredToken": ("ExpiredToken", 400, "The provided token has expired."),
    "SignatureDoesNotMatch": ("SignatureDoesNotMatch", 403, "The request signature we calculated does not match."),
    "InvalidObjectState (archived)": ("InvalidObjectState", 403, "The operation is not valid for the storage class"),
    "InvalidBucketName": ("InvalidBucketName", 400, "The specified bucket is not valid."),
    # a message with '500' in it: the old classifier matched the digits
    "EntityTooLarge": ("EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed size (5000 MB)"),
    "409 Conflict on HEAD": ("409", 409, "Conflict"),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT_ANSWERS))
def test_s3_answers_that_say_try_again_are_transient(name: str) -> None:
    err = _client_error(*TRANSIENT_ANSWERS[name])
    assert storage.is_transient(err), f"raw ClientError {name}"
    translated = _as_s3fs_raises(err)
    assert storage.is_transient(translated), f"{name} as s3fs raises it: {type(translated).__name__}: {translated}"


@pytest.mark.parametrize("name", sorted(PERMANENT_ANSWERS))
def test_s3_answers_that_will_not_change_are_permanent(name: str) -> None:
    err = _client_error(*PERMANENT_ANSWERS[name])
    assert not storage.is_transient(err), f"raw ClientError {name}"
    translated = _as_s3fs_raises(err)
    assert not storage.is_transient(translated), f"{name} as s3fs raises it: {type(translated).__name__}"


def _caused(err: BaseException, cause: BaseException) -> BaseException:
    err.__cause__ = cause
    return err


TRANSPORT = {
    "ConnectionResetError": ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "TimeoutError (socket.timeout, asyncio.TimeoutError)": TimeoutError("timed out"),
    "botocore EndpointConnectionError": boto.EndpointConnectionError(endpoint_url="http://s3"),
    "botocore ReadTimeoutError": boto.ReadTimeoutError(endpoint_url="http://s3"),
    "botocore ConnectionClosedError": boto.ConnectionClosedError(endpoint_url="http://s3"),
    # a connection dropped while the body streams in (aiobotocore wraps aiohttp's error; s3fs re-raises it after
    # its own retries): the old classifier took it for permanent, so the image became a reject
    "botocore ResponseStreamingError": boto.ResponseStreamingError(error=aiohttp.ServerDisconnectedError()),
    "botocore IncompleteReadError": boto.IncompleteReadError(actual_bytes=1, expected_bytes=2),
    "aiohttp ServerDisconnectedError": aiohttp.ServerDisconnectedError(),
    "aiohttp ClientPayloadError": aiohttp.ClientPayloadError("Response payload is not completed"),
    # the same drop as aiohttp raises it mid-body: its cause, ContentLengthError, carries code = 400, which was taken
    # for the server's HTTP status, so the read was never retried (reproduced through moto and a dropping proxy)
    "aiohttp ClientPayloadError from ContentLengthError": _caused(
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.http_exceptions.ContentLengthError("Not enough data to satisfy content length header.")),
    "aiohttp ClientPayloadError from TransferEncodingError": _caused(
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.http_exceptions.TransferEncodingError("Not enough data to satisfy transfer length header.")),
    "aiohttp ClientOSError ECONNRESET": aiohttp.ClientOSError(errno.ECONNRESET, "reset"),
}
NOT_TRANSIENT = {
    "local FileNotFoundError": FileNotFoundError(errno.ENOENT, "No such file or directory", "/in/timeout-500.png"),
    "local PermissionError": PermissionError(errno.EACCES, "Permission denied", "/in/connection.png"),
    "local ENOSPC naming a 'timed out' folder": OSError(errno.ENOSPC, "No space left on device", "/out/timed out/x"),
    "botocore NoCredentialsError": boto.NoCredentialsError(),
    "botocore SSLError": boto.SSLError(endpoint_url="https://s3", error="certificate verify failed"),
    # errors of the data that quote a path: the listing of the whole input was redone six times for these
    "ValueError naming img_500": ValueError("1 input file(s) have ids ...: s3://b/cifar500/x.tar/img_500 (beside "
                                            "s3://b/cifar500/x.tar); rename them"),
    "ValueError naming timeout.png": ValueError("input s3://b/timeout.png is an fsspec URL chain"),
    "ArrowInvalid naming a connection-logs folder": pa.ArrowInvalid("Parquet magic bytes not found in footer: "
                                                                    "s3://b/connection-logs/t.parquet"),
}


@pytest.mark.parametrize("name", sorted(TRANSPORT))
def test_dropped_connections_and_timeouts_are_transient(name: str) -> None:
    assert storage.is_transient(TRANSPORT[name])


@pytest.mark.parametrize("name", sorted(NOT_TRANSIENT))
def test_missing_denied_and_data_errors_are_not_retried_whatever_their_message(name: str) -> None:
    assert not storage.is_transient(NOT_TRANSIENT[name])


def _flaky(errors: list[BaseException], result: str = "done"):
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


@pytest.fixture
def no_waiting(monkeypatch) -> list[int]:
    """Record the backoffs with_retries asks for instead of sleeping through them."""
    waits: list[int] = []
    monkeypatch.setattr(storage, "backoff", lambda attempt, *a, **k: waits.append(attempt))
    monkeypatch.setattr(storage.time, "sleep", lambda s: pytest.fail(f"a test slept {s} s"))
    return waits


def test_a_500_from_s3_is_retried_and_the_read_succeeds(no_waiting) -> None:
    """s3fs raises InternalError as OSError(EREMOTEIO, 'We encountered an internal error...'): it was not retried,
    so an image whose GET met a burst of 500s became a reject."""
    fn, calls = _flaky([_as_s3fs_raises(_client_error(*TRANSIENT_ANSWERS["InternalError 500"]))] * 2)
    assert storage.with_retries(fn, "read s3://b/x.png") == "done"
    assert len(calls) == 3 and no_waiting == [0, 1]


def test_transient_errors_get_six_attempts_then_the_last_error(no_waiting) -> None:
    slow = _as_s3fs_raises(_client_error(*TRANSIENT_ANSWERS["SlowDown 503"]))
    fn, calls = _flaky([slow] * 10)
    with pytest.raises(OSError, match="reduce your request rate"):
        storage.with_retries(fn, "read s3://b/x.png")
    assert len(calls) == 6 and no_waiting == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", ["AccessDenied 403", "NoSuchBucket", "InvalidAccessKeyId", "ExpiredToken"])
def test_permanent_errors_are_raised_at_once(no_waiting, name: str) -> None:
    fn, calls = _flaky([_as_s3fs_raises(_client_error(*PERMANENT_ANSWERS[name]))])
    with pytest.raises(OSError):
        storage.with_retries(fn, "read s3://b/x.png")
    assert len(calls) == 1 and no_waiting == []


def test_a_data_error_naming_a_file_is_not_retried(no_waiting) -> None:
    fn, calls = _flaky([NOT_TRANSIENT["ValueError naming img_500"]])
    with pytest.raises(ValueError):
        storage.with_retries(fn, "list s3://b/cifar500")
    assert len(calls) == 1


def test_backoff_grows_exponentially_with_jitter_and_never_exceeds_its_cap(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", slept.append)
    for draw in (0.0, 0.5, 0.999999):
        monkeypatch.setattr(storage.random, "random", lambda d=draw: d)
        for attempt in range(12):
            storage.backoff(attempt, 0.2, 8.0)
    lowest, middle, highest = slept[:12], slept[12:24], slept[24:]
    for attempt in range(5):  # below the cap: base·2^attempt, jittered from 0.5x to 1.5x
        assert lowest[attempt] == pytest.approx(0.1 * 2**attempt)
        assert middle[attempt] == pytest.approx(0.2 * 2**attempt)
        assert highest[attempt] == pytest.approx(0.3 * 2**attempt, rel=1e-5)
    # the jitter pushed a capped delay to 12 s before; the cap is the most any wait can be
    assert max(slept) <= 8.0 and highest[-1] == pytest.approx(8.0)
    # the five waits of the default six attempts: at most 0.2·(1+2+4+8+16)·1.5 = 9.3 s in all
    assert sum(highest[:5]) <= 9.3 + 1e-6


def test_backoff_delays_are_spread_out() -> None:
    """Jitter: workers throttled together must not all retry at the same instant."""
    delays = {round(storage.backoff_delay(3), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 0.8 and max(delays) <= 2.4
