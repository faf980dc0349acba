"""The token core against the real azure-identity ManagedIdentityCredential talking to the IMDS emulator."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential

from django_azure_mi import TokenUnavailableError, get_token_provider
from django_azure_mi.core.errors import redact
from django_azure_mi.testing.imds import Fault

from .conftest import CLIENT_ID, STORAGE, STORAGE_RESOURCE, VAULT, claims, run_threads


def test_provider_is_a_token_credential(azure_imds):
    provider = get_token_provider(STORAGE)
    assert isinstance(provider, TokenCredential)
    token = provider.get_token(STORAGE)
    assert isinstance(token, AccessToken)
    info = provider.get_token_info(STORAGE)
    assert isinstance(info, AccessTokenInfo)
    assert info.token == token.token
    assert claims(token.token)["aud"] == STORAGE_RESOURCE
    assert get_token_provider(STORAGE) is provider  # process-wide


def test_single_flight_50_threads_one_request(azure_imds):
    provider = get_token_provider(STORAGE)
    hold = azure_imds.hold()  # keep the one request open while the 50 callers pile up
    release = threading.Timer(0.5, hold.release)
    release.start()
    tokens = run_threads(50, lambda: provider.get_token(STORAGE).token)
    release.cancel()
    assert hold.arrived.is_set()
    assert azure_imds.request_count(STORAGE_RESOURCE) == 1
    assert len(set(tokens)) == 1 and isinstance(tokens[0], str)
    assert provider.stats["requests"] == 1


def test_other_scopes_route_to_the_sibling_provider(azure_imds):
    provider = get_token_provider(STORAGE)
    vault_token = provider.get_token(VAULT)
    assert claims(vault_token.token)["aud"] == "https://vault.azure.net"
    assert get_token_provider(VAULT).get_token(VAULT).token == vault_token.token
    with pytest.raises(ValueError, match="exactly one scope"):
        provider.get_token(STORAGE, VAULT)


def test_a_provider_built_directly_serves_its_own_scope_only(make_provider, azure_imds):
    """Siblings come from the runtime's one provider map; a TokenProvider built around a credential has none
    and refuses another audience before anything is fetched."""
    from django_azure_mi.core.errors import ScopeRefusedError

    provider = make_provider(STORAGE)
    with pytest.raises(ScopeRefusedError, match=r"serves 'https://storage\.azure\.com/\.default' only"):
        provider.get_token(VAULT)
    assert azure_imds.request_count() == 0
    assert claims(provider.get_token(STORAGE).token)["aud"] == "https://storage.azure.com"


@pytest.mark.azure_imds(known_client_ids=[CLIENT_ID])  # assigned to the host
def test_system_and_user_assigned_identities_get_their_own_object_ids(azure_imds):
    system = claims(get_token_provider(STORAGE).get_token(STORAGE).token)
    user = claims(get_token_provider(STORAGE, client_id=CLIENT_ID).get_token(STORAGE).token)
    assert system["oid"] == azure_imds.object_id(None)
    assert user["oid"] == azure_imds.object_id(CLIENT_ID)
    assert system["oid"] != user["oid"]
    assert user["appid"] == CLIENT_ID
    assert system["iss"] == f"https://sts.windows.net/{azure_imds.tenant_id}/"
    for claim in ("tid", "iat", "nbf", "exp"):
        assert claim in user


@pytest.mark.azure_imds(known_client_ids=[CLIENT_ID])  # assigned to the host
def test_client_id_setting_selects_the_user_assigned_identity(azure_imds, settings):
    settings.AZURE_MANAGED_IDENTITY = {"CLIENT_ID": CLIENT_ID}
    token = get_token_provider(STORAGE).get_token(STORAGE)
    assert claims(token.token)["oid"] == azure_imds.object_id(CLIENT_ID)


@pytest.mark.azure_imds(mode="app_service", known_client_ids=[CLIENT_ID])
def test_app_service_flavour(azure_imds):
    token = get_token_provider(STORAGE, client_id=CLIENT_ID).get_token(STORAGE)
    assert claims(token.token)["oid"] == azure_imds.object_id(CLIENT_ID)
    assert azure_imds.request_count() == 1


UNASSIGNED = "99999999-8888-7777-6666-555555555555"


@pytest.mark.azure_imds(ttl=600)
def test_a_client_id_the_host_has_no_identity_for_gets_azures_answer(azure_imds, settings):
    """As Azure's identity endpoint: a client id that is not one of the host's identities gets 400
    "Identity not found", and the error says the identity is not assigned to the host. (The emulator
    used to make up an identity for any client id, so a wrong CLIENT_ID showed up locally as a Postgres
    or Redis refusal.)"""
    import requests

    from django_azure_mi import diagnostics

    url = f"{azure_imds.endpoint}?api-version=2018-02-01&resource={STORAGE_RESOURCE}&client_id={UNASSIGNED}"
    answer = requests.get(url, headers={"Metadata": "true"}, timeout=5)
    assert (answer.status_code, answer.json()["error_description"]) == (400, "Identity not found")
    settings.AZURE_MANAGED_IDENTITY = {"CLIENT_ID": UNASSIGNED, "TIMEOUT": 5}
    with pytest.raises(TokenUnavailableError) as info:
        get_token_provider(STORAGE).get_token(STORAGE)
    failure = diagnostics.diagnose_identity(info.value)
    assert failure is not None and failure.kind == "unknown-identity", failure
    assert "is assigned to this host" in failure.diagnosis and "identity assign" in failure.fix


@pytest.mark.azure_imds(lenient=True)
def test_a_lenient_emulator_makes_up_an_identity_for_any_client_id(azure_imds):
    token = get_token_provider(STORAGE, client_id=UNASSIGNED).get_token(STORAGE)
    assert claims(token.token)["oid"] == azure_imds.object_id(UNASSIGNED)


def test_emulator_requires_the_metadata_header(azure_imds):
    import requests

    url = azure_imds.endpoint + "?api-version=2018-02-01&resource=https://storage.azure.com"
    assert requests.get(url, timeout=5).status_code == 400
    assert requests.get(url, headers={"Metadata": "true"}, timeout=5).status_code == 200


# < 5 min: azure-identity's own cache steps aside (docs/azure-behaviour.md §3)
@pytest.mark.azure_imds(ttl=120)
def test_background_refresh_never_makes_callers_wait(make_provider, azure_imds):
    provider = make_provider()
    old = provider.get_token(STORAGE).token
    installed = threading.Event()
    provider.subscribe(lambda info: installed.set())
    hold = azure_imds.hold()
    provider.refresh()
    assert hold.wait_arrived(10)
    # The refresh request is held open: every caller meanwhile gets the old token at once.
    during = run_threads(20, lambda: provider.get_token(STORAGE).token, timeout=10)
    assert during == [old] * 20
    assert not installed.is_set()
    hold.release()
    assert installed.wait(10)
    new = provider.get_token(STORAGE).token
    assert new != old
    assert provider.stats["waits"] == 1  # only the very first (cold) call waited


@pytest.mark.azure_imds(ttl=5)
def test_refresh_is_scheduled_before_expiry(make_provider, azure_imds):
    """With a 4 s token the worker refreshes on its own in the second half of the lifetime."""
    provider = make_provider(refresh_margin=300)
    first = provider.get_token(STORAGE)
    hold = azure_imds.hold()
    assert hold.wait_arrived(10), "the worker did not start a refresh on its own"
    assert time.time() < first.expires_on  # the refresh started while the token was still valid
    assert provider.get_token(STORAGE).token == first.token
    hold.release()
    assert provider.refresh(wait=True)  # and the next one works too
    assert provider.get_token(STORAGE).token != first.token


# An identity endpoint that echoes a token in its error body: azure-identity logs the body at WARNING.
TOKEN_IN_BODY = json.dumps(
    {
        "error": "invalid_request",
        "error_description": "bad assertion eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    }
)
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.")

FAULTS = {
    "404": lambda emu: emu.fail_always(Fault.error(404)),
    "410": lambda emu: emu.fail_always(Fault.error(410)),
    "429-retry-after": lambda emu: emu.fail_always(Fault.error(429, retry_after=0.2)),
    "500": lambda emu: emu.fail_always(Fault.error(500)),
    "500-with-a-token-in-the-body": lambda emu: emu.fail_always(Fault.error(500, body=TOKEN_IN_BODY)),
    "malformed-json": lambda emu: emu.fail_always(Fault.malformed()),
    "hang": lambda emu: emu.fail_always(Fault.hang()),
    "connection-refused": lambda emu: emu.pause(),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.azure_imds(ttl=5)
def test_fault_survived_while_valid_then_clear_error_then_recovery(fault, make_provider, azure_imds, caplog):
    provider = make_provider(refresh_margin=0)  # no scheduled refresh before expiry: we trigger it
    caplog.set_level(logging.DEBUG)
    first = provider.get_token(STORAGE)
    FAULTS[fault](azure_imds)
    before = azure_imds.request_count()

    # 1. The refresh fails; callers keep getting the cached token without waiting.
    assert provider.refresh(wait=True, timeout=15) is False
    assert provider.last_error
    for _ in range(3):
        assert provider.get_token(STORAGE).token == first.token

    # 2. Once the token is about to expire: a clear error with scope, identity and the last error.
    time.sleep(max(0.0, first.expires_on - 0.5 - time.time()) + 0.1)
    with pytest.raises(TokenUnavailableError) as info:
        provider.get_token(STORAGE)
    message = str(info.value)
    assert STORAGE in message and "test identity" in message and "Last error" in message
    assert first.token not in message
    assert info.value.scope == STORAGE

    # Retries were bounded (capped backoff, at most 2 HTTP tries per attempt), never a storm.
    assert azure_imds.request_count() - before <= 40

    # 3. Recovery: the endpoint comes back and callers get a new token again.
    azure_imds.clear_faults()
    azure_imds.resume()
    deadline = time.time() + 20
    while True:
        try:
            token = provider.get_token(STORAGE)
            break
        except TokenUnavailableError:
            assert time.time() < deadline, "no recovery"
            time.sleep(0.2)
    assert token.token != first.token
    assert first.token not in caplog.text
    assert token.token not in caplog.text
    # no JWT-shaped string in any record of any logger (azure-identity's own lines included)
    leaked = [r.name for r in caplog.records if JWT_SHAPED.search(r.getMessage() + (r.exc_text or ""))]
    assert not [r.name for r in caplog.records if r.exc_info and JWT_SHAPED.search(str(r.exc_info[1]))]
    assert not leaked, leaked
    assert str(info.value).count("eyJ") == 0


@pytest.mark.azure_imds(ttl=3600)
def test_fault_on_cold_provider_gives_clear_error_within_timeout(make_provider, azure_imds):
    azure_imds.fail_always(Fault.hang())
    provider = make_provider(timeout=1)
    with pytest.raises(TokenUnavailableError, match=r"no token within 1s \(TIMEOUT\)"):
        provider.get_token(STORAGE)


@pytest.mark.azure_imds(ttl=3600)
def test_one_failing_request_is_retried_inside_the_attempt(make_provider, azure_imds):
    azure_imds.inject(Fault.error(500))
    provider = make_provider()
    provider.get_token(STORAGE)
    assert azure_imds.request_count() == 2  # azure-core's retry policy, one attempt
    assert provider.stats["failures"] == 0


def test_identity_not_found_is_reported(make_provider, azure_imds):
    azure_imds.system_assigned = False
    provider = make_provider()
    with pytest.raises(TokenUnavailableError, match="Identity not found"):
        provider.get_token(STORAGE)


@pytest.mark.azure_imds(ttl=120)
def test_no_token_text_in_logs_reprs_or_errors(make_provider, azure_imds, caplog):
    caplog.set_level(logging.DEBUG)
    provider = make_provider()
    token = provider.get_token(STORAGE)
    info = provider.get_token_info(STORAGE)
    leaked = azure_imds.mint(STORAGE_RESOURCE).token
    # An upstream error body that contains a token: it must be redacted wherever we report it.
    azure_imds.fail_always(Fault.error(500, body=f'{{"error": "boom", "error_description": "{leaked}"}}'))
    provider.refresh(wait=True)
    for text in (repr(provider), repr(token), repr(info), str(provider.stats), provider.last_error or ""):
        assert token.token not in text
        assert leaked not in text
    assert token.token not in caplog.text  # nobody logged the real token
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("django_azure_mi"))
    assert "token acquired" in ours and "token refresh failed" in ours
    assert leaked not in ours and token.token not in ours
    assert "length=" in ours


def test_redact():
    token = "eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl"
    assert redact(f"bad token {token} here") == "bad token <redacted token> here"


@pytest.mark.azure_imds(ttl=3600)
def test_async_entry_point_does_not_block_the_loop(make_provider, azure_imds):
    provider = make_provider()
    hold = azure_imds.hold()

    async def main():
        task = asyncio.create_task(provider.get_token_async(STORAGE))
        while not hold.arrived.is_set():
            await asyncio.sleep(0.01)
        ticks = 0
        for _ in range(5):  # the loop keeps running while the token request is held open
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()
        hold.release()
        first = await task
        async with provider.as_async() as credential:
            again = await credential.get_token(STORAGE)
            info = await credential.get_token_info(STORAGE)
        return ticks, first, again, info

    ticks, first, again, info = asyncio.run(main())
    assert ticks == 5
    assert first.token == again.token == info.token


@pytest.mark.azure_imds(ttl=3600)
def test_azure_identity_cache_answer_is_not_a_failure(make_provider, azure_imds, caplog):
    """Above 5 minutes left, azure-identity returns its cached token: we retry later, quietly."""
    caplog.set_level(logging.INFO, logger="django_azure_mi")
    provider = make_provider()
    first = provider.get_token(STORAGE)
    assert provider.refresh(wait=True) is False
    assert provider.stats["failures"] == 0 and provider.last_error is None
    assert azure_imds.request_count() == 1
    assert provider.get_token(STORAGE).token == first.token
    assert "refresh deferred" in caplog.text


@pytest.mark.azure_imds(ttl=120)
def test_claims_challenge_fetches_a_new_token(make_provider, azure_imds):
    provider = make_provider()
    first = provider.get_token(STORAGE)
    second = provider.get_token(STORAGE, claims='{"access_token":{"nbf":{"essential":true}}}')
    assert second.token != first.token
    assert provider.get_token(STORAGE).token == second.token


@pytest.mark.azure_imds(ttl=120)
def test_subscribers_hear_every_new_token(make_provider, azure_imds):
    provider = make_provider()
    seen = []
    unsubscribe = provider.subscribe(lambda info: seen.append(info.token))
    provider.get_token(STORAGE)
    assert provider.refresh(wait=True)
    unsubscribe()
    assert provider.refresh(wait=True)
    assert len(seen) == 2 and seen[-1] != provider.get_token(STORAGE).token


def test_custom_credential_path(settings, azure_imds):
    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "tests.test_tokens.emulator_credential"}
    token = get_token_provider(STORAGE).get_token(STORAGE)
    assert claims(token.token)["oid"] == azure_imds.object_id(None)


def emulator_credential():
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential()


def test_emulator_callbacks_see_each_issued_token(azure_imds):
    issued = []
    unsubscribe = azure_imds.on_token(issued.append)
    token = get_token_provider(STORAGE).get_token(STORAGE)
    unsubscribe()
    assert [i.token for i in issued] == [token.token]
    assert issued[0].resource == STORAGE_RESOURCE
    assert token.token not in repr(issued[0])


@pytest.mark.azure_imds(known_client_ids=[CLIENT_ID])  # assigned to the host
def test_default_credential_reaches_managed_identity(settings, azure_imds, monkeypatch):
    """CREDENTIAL="default" (DefaultAzureCredential) passes CLIENT_ID on to its managed-identity step."""
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "default", "CLIENT_ID": CLIENT_ID}
    provider = get_token_provider(STORAGE)
    assert provider.identity == f"DefaultAzureCredential (client_id={CLIENT_ID})"
    assert claims(provider.get_token(STORAGE).token)["oid"] == azure_imds.object_id(CLIENT_ID)
    assert provider.source == "default-credential"


@pytest.mark.azure_imds(ttl=120)
def test_a_huge_retry_after_does_not_wedge_the_provider(settings, azure_imds):
    """One 429 with Retry-After: 100000 must not keep the worker asleep inside azure-core's retry: the
    attempt ends within the cap and the core's own schedule brings the token once IMDS answers again."""
    settings.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 2}
    azure_imds.inject(Fault.error(429, retry_after=100000))
    provider = get_token_provider(STORAGE)
    started = time.monotonic()
    deadline = started + 30
    token = None
    while token is None and time.monotonic() < deadline:
        try:
            token = provider.get_token(STORAGE)
        except TokenUnavailableError:
            time.sleep(0.2)
    assert token is not None, provider.last_error
    assert time.monotonic() - started < 15  # the cap (8 s) and the core's retry, not 100000 s
    assert azure_imds.request_count() == 2


def test_absurd_identity_answers_are_refused_with_a_clear_error(make_provider, azure_imds):
    """A 5 MB "token" is a failure (not installed); an expires_on beyond the JWT's lifetime is not
    believed."""
    from azure.core.credentials import AccessTokenInfo

    class Liar:
        def __init__(self, token: str, expires_on: int) -> None:
            self.answer = AccessTokenInfo(token, expires_on)

        def get_token_info(self, *scopes, options=None):
            return self.answer

    huge = make_provider(credential=Liar("x" * 5_000_000, int(time.time()) + 3600), timeout=1)
    with pytest.raises(TokenUnavailableError, match=r"5000000 characters \(at most 65536\)"):
        huge.get_token(STORAGE)
    real = azure_imds.mint(STORAGE_RESOURCE, ttl=600)
    optimist = make_provider(credential=Liar(real.token, int(time.time()) + 86400 * 30))
    believed = optimist.get_token(STORAGE).expires_on  # the JWT's own lifetime (exp - iat) from the request
    assert abs(believed - claims(real.token)["exp"]) <= 2, believed


@pytest.mark.azure_imds(ttl=2)
def test_a_too_short_token_is_refused_and_never_asked_for_in_a_hot_loop(make_provider, azure_imds):
    """2 s tokens once made 1 IMDS request per second: now each is refused (it would expire before use) and
    the retries back off exponentially, however often callers ask."""
    provider = make_provider(retry_base=1.0, retry_cap=60.0, timeout=0.2)
    errors = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        try:
            provider.get_token(STORAGE)
        except TokenUnavailableError as exc:
            errors.append(str(exc))
        time.sleep(0.05)
    assert errors and "lives" in errors[-1] and "at least 3s" in errors[-1], errors[-1:]
    assert azure_imds.request_count() <= 5  # 0, ~1, ~3, ~7 s: backoff, not 1/s (nor 20/s for 20 calls/s)


def test_refreshes_have_a_floor_whatever_the_issuer_says():
    from django_azure_mi.core import policy

    now = 1_000_000.0
    # the issuer's refresh_on 0.1 s after issue, a margin larger than the lifetime: still >= the floor
    assert policy.refresh_due(now + 3, now, 300, now + 0.1) == now + policy.MIN_REFRESH_INTERVAL
    assert policy.refresh_due(now + 3600, now, 300, None) == now + 3300


def test_the_emulator_enforces_azures_identity_limits_by_default(azure_imds):
    """20 requests a second and 5 at once per VM; past that 429 with Retry-After (DESIGN §3)."""
    import requests

    url = f"{azure_imds.endpoint}?api-version=2018-02-01&resource={STORAGE_RESOURCE}"

    def ask() -> requests.Response:
        return requests.get(url, headers={"Metadata": "true"}, timeout=10)

    from django_azure_mi.testing.clock import FakeClock

    azure_imds.clock = clock = FakeClock()  # one second of Azure's, however long a loaded machine takes
    burst = [ask() for _ in range(25)]
    assert [r.status_code for r in burst].count(200) == 20
    refused = [r for r in burst if r.status_code == 429]
    assert len(refused) == 5 and all(r.headers["Retry-After"] == "1" for r in refused)
    clock.advance(1.1)
    azure_imds.latency = 0.5  # keep requests in flight
    concurrent = run_threads(8, ask)
    assert sorted(r.status_code for r in concurrent) == [200] * 5 + [429] * 3
    assert azure_imds.throttled == 8
    azure_imds.limits = False
    assert all(r.status_code == 200 for r in run_threads(8, ask))


@pytest.mark.parametrize("skew", [-300.0, 300.0], ids=["azure-behind-5min", "azure-ahead-5min"])
@pytest.mark.azure_imds(ttl=60)
def test_a_clock_five_minutes_off_the_issuers_changes_no_timing(make_provider, azure_imds, skew):
    """The JWT's iat/exp are on Azure's clock, expires_in is a duration: a token is believed to live what
    the issuer says from when we asked, and it was issued (for the Redis re-AUTH schedule) when we asked.
    Before, a host 5 minutes ahead of Azure believed exp and refused 60 s tokens as already expired."""
    azure_imds.clock_skew = skew
    provider = make_provider()
    asked = time.time()
    provider.get_token(STORAGE)
    token = provider.current()
    assert asked + 55 <= token.expires_on <= asked + 62, token.expires_on - asked
    assert abs(token.issued_at - asked) <= 2, token.issued_at - asked
    assert claims(token.value)["exp"] - asked == pytest.approx(60 + skew, abs=2)


# ---------------------------------------------------------------------------------------------- bounded


@pytest.mark.parametrize("fault", ["endless", "trickle"])
def test_each_identity_request_has_one_deadline_and_a_capped_body(fault, azure_imds, settings):
    """An endless body grew the worker from 58 to 212 MB (the 64 kB cap came after the whole body was
    read); a slowloris (a byte at a time, headers and body) kept one request going for its whole 60 s,
    with no retry. Now the body is capped while reading, and each request ends at TIMEOUT whatever it is
    doing; azure-core's retry (the next request is answered normally) then gets the token."""
    from django_azure_mi.testing.imds import Fault

    settings.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 2}
    provider = get_token_provider(STORAGE)
    azure_imds.inject(Fault.endless() if fault == "endless" else Fault.trickle(0.05, duration=40))
    assert provider.refresh(wait=True, timeout=25), provider.last_error  # the retry got the token
    deadline = time.monotonic() + 10
    while not azure_imds.fault_bytes and time.monotonic() < deadline:  # until the emulator sees the hang-up
        time.sleep(0.05)
    (sent,) = azure_imds.fault_bytes
    if fault == "endless":
        assert sent < 4 * 1024 * 1024, f"{sent} bytes of an endless body were read"
    else:
        assert sent < 4 / 0.05, f"the trickle went on for {sent} bytes (~{sent * 0.05:.0f}s)"
