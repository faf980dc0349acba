"""Blob storage with a managed identity against Azurite (OAuth, HTTPS) and the real azure-identity."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from django_azure_mi import get_token_provider
from django_azure_mi.storage import AzureManagedIdentityStorage

from .conftest import LoopbackServer, in_child, run_threads
from .testapp.models import Document

STORAGE_SCOPE = "https://storage.azure.com/.default"


@pytest.fixture
def container():
    return f"c{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_storage(azure_storage, container):
    def make(**options) -> AzureManagedIdentityStorage:
        storage = AzureManagedIdentityStorage(**azure_storage.storage_options(container, **options))
        if not storage.client.exists():
            storage.client.create_container()
        return storage

    return make


@pytest.fixture
def use_default_storage(azure_storage, container, settings, make_storage, monkeypatch):
    make_storage(expiration_secs=600)  # creates the container
    settings.STORAGES = {
        "default": {
            "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
            "OPTIONS": azure_storage.storage_options(container, expiration_secs=600),
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    return default_storage


def test_storage_api_through_default_storage(use_default_storage, azure_storage):
    storage = use_default_storage
    name = storage.save("dir/hello world.txt", ContentFile(b"hello"))
    assert storage.exists(name)
    assert storage.size(name) == 5
    with storage.open(name) as fh:
        assert fh.read() == b"hello"
    assert "hello world.txt" in " ".join(storage.listdir("dir")[1])
    assert storage.get_modified_time(name).year >= 2024
    assert requests.get(storage.url(name), verify=azure_storage.ca_file, timeout=10).content == b"hello"
    storage.delete(name)
    assert not storage.exists(name)


def test_model_file_field(use_default_storage, azure_storage):
    document = Document()
    document.file.save("report.txt", ContentFile(b"quarterly"), save=False)
    assert document.file.name.startswith("docs/report")
    assert document.file.size == 9
    document.file.open("rb")
    assert document.file.read() == b"quarterly"
    document.file.close()
    response = requests.get(document.file.url, verify=azure_storage.ca_file, timeout=10)
    assert response.status_code == 200 and response.content == b"quarterly"


def test_signed_url_works_and_a_tampered_one_is_refused(make_storage, azure_storage):
    storage = make_storage(expiration_secs=300)
    storage.save("private.txt", ContentFile(b"secret bytes"))
    url = storage.url("private.txt")
    assert "sig=" in url and "skoid=" in url  # a user delegation SAS
    assert requests.get(url, verify=azure_storage.ca_file, timeout=10).content == b"secret bytes"
    tampered = url.replace("sp=r", "sp=rw")
    assert requests.get(tampered, verify=azure_storage.ca_file, timeout=10).status_code == 403
    unsigned = storage.url("private.txt", expire=0)
    assert "?" not in unsigned


def test_twenty_threads_on_a_cold_process_fetch_one_delegation_key(make_storage, azure_storage):
    storage = make_storage(expiration_secs=300)
    before = azure_storage.settled_count("Service_GetUserDelegationKey")
    urls = run_threads(20, lambda: storage.url("file.txt"))
    assert all(isinstance(u, str) and "sig=" in u for u in urls)
    assert azure_storage.settled_count("Service_GetUserDelegationKey") - before == 1
    assert storage._keys.requests == 1


def test_delegation_key_is_backdated_and_under_seven_days(make_storage):
    storage = make_storage(expiration_secs=300)
    storage.url("file.txt")
    key = storage._keys.refresher.value
    lifetime = key.expiry - key.start
    assert key.start < key.expiry and lifetime.total_seconds() < 7 * 86400
    assert time.time() - key.start.timestamp() >= 600  # started 15 minutes ago (clock skew)


def test_warm_url_makes_no_network_call(make_storage, azure_storage, azure_imds):
    storage = make_storage(expiration_secs=300)
    storage.url("a.txt")
    requests_before = azure_imds.request_count()
    keys_before = azure_storage.settled_count("Service_GetUserDelegationKey")
    for i in range(50):
        storage.url(f"f{i}.txt")
    assert azure_storage.settled_count("Service_GetUserDelegationKey") == keys_before
    assert azure_imds.request_count() == requests_before


@pytest.mark.slow
@pytest.mark.azure_imds(ttl=6)
def test_tokens_rotating_mid_run(make_storage, azure_imds):
    storage = make_storage()
    deadline = time.monotonic() + 14  # more than two token lifetimes
    n = 0
    while time.monotonic() < deadline:
        name = storage.save(f"rot/{n}.txt", ContentFile(str(n).encode()))
        with storage.open(name) as fh:
            assert fh.read() == str(n).encode()
        n += 1
        time.sleep(0.1)
    assert azure_imds.issued_count("https://storage.azure.com") >= 3


def test_token_for_the_wrong_audience_gives_a_clear_error(make_storage, azure_storage, container):
    make_storage()  # the container exists
    storage = AzureManagedIdentityStorage(
        **azure_storage.storage_options(
            container, managed_identity={"scope": "https://vault.azure.net/.default"}
        )
    )
    with pytest.raises(HttpResponseError) as info:
        storage.save("x.txt", ContentFile(b"x"))
    message = str(info.value)
    assert "Blob Storage refused to" in message and "AuthenticationFailed" in message
    assert "scope" in message and "https://storage.azure.com/.default" in message


def test_no_token_in_logs(make_storage, caplog):
    caplog.set_level(logging.DEBUG)
    storage = make_storage(expiration_secs=300)
    storage.save("log.txt", ContentFile(b"x"))
    storage.url("log.txt")
    token = get_token_provider(STORAGE_SCOPE).get_token(STORAGE_SCOPE).token
    assert token not in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"account_url": None, "account_name": None}, "has no 'account_name'.*nor 'account_url'"),
        (
            {"connection_string": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5"},
            "connection_string",
        ),
        ({"account_key": "a2V5"}, r"\['account_key'\]"),
        ({"sas_token": "sv=2020&sig=x"}, r"\['sas_token'\]"),
        ({"account_url": "http://acct.blob.core.windows.net"}, "only over https"),
        ({"expiration_secs": 8 * 86400}, "cannot outlive its user delegation key"),
        ({"managed_identity": {"clientid": "x"}}, "'client_id' and/or 'scope'"),
        ({"managed_identity": {"scope": "storage"}}, r"\['scope'\] = 'storage' is not a scope"),
        ({"managed_identity": {"client_id": "my-app"}}, r"\['client_id'\] must be the client id"),
    ],
)
def test_misconfiguration_names_the_setting(azure_imds, options, message):
    base = {"account_url": "https://127.0.0.1:10000/devstoreaccount1", "azure_container": "media"}
    with pytest.raises(ImproperlyConfigured, match=message):
        AzureManagedIdentityStorage(**{**base, **options})


def test_account_url_shapes(azure_imds, settings):
    path_style = AzureManagedIdentityStorage(
        account_url="http://127.0.0.1:10000/devstoreaccount1/", azure_container="media"
    )
    assert path_style.account_name == "devstoreaccount1"
    private = AzureManagedIdentityStorage(
        account_url="https://acct.privatelink.blob.core.windows.net", azure_container="media"
    )
    assert private.account_name == "acct"
    settings.AZURE_MANAGED_IDENTITY = {"CLOUD": "usgovernment"}
    gov = AzureManagedIdentityStorage(account_name="acct", azure_container="media")
    assert gov.account_url == "https://acct.blob.core.usgovcloudapi.net"


def test_one_credential_per_identity_shared_by_storages(make_storage):
    assert make_storage().token_credential is make_storage().token_credential


def test_concurrent_saves(make_storage):
    storage = make_storage()
    names = run_threads(8, lambda: storage.save(f"c/{threading.get_ident()}.txt", ContentFile(b"z")))
    assert all(storage.exists(n) for n in names)


def test_delegation_key_is_renewed_in_the_background(make_storage, azure_storage):
    import dataclasses
    from datetime import datetime, timezone

    storage = make_storage(expiration_secs=300)
    storage.save("b.txt", ContentFile(b"renewed"))
    storage.url("a.txt")
    first = storage._keys.refresher.value
    # Pretend the key reached its renewal point: url() keeps using it and renews it in the background.
    storage._keys.refresher.install(dataclasses.replace(first, renew_at=datetime.now(timezone.utc)))
    assert "sig=" in storage.url("b.txt")
    deadline = time.monotonic() + 10
    while storage._keys.refresher.value.start == first.start and time.monotonic() < deadline:
        time.sleep(0.05)
    assert storage._keys.requests == 2
    assert storage._keys.refresher.value.expiry > first.expiry
    response = requests.get(storage.url("b.txt"), verify=azure_storage.ca_file, timeout=10)
    assert response.content == b"renewed"  # signed with the new key


def test_django_storages_options_keep_working(make_storage, azure_storage):
    storage = make_storage(
        location="site",
        overwrite_files=True,
        cache_control="max-age=60",
        object_parameters={"content_language": "en"},
    )
    name = storage.save("a.txt", ContentFile(b"1"))
    assert storage.save("a.txt", ContentFile(b"2")) == name  # overwrite_files
    blob = storage.client.get_blob_client("site/a.txt").get_blob_properties()
    assert blob.content_settings.cache_control == "max-age=60"
    assert blob.content_settings.content_language == "en"
    with storage.open(name) as fh:
        assert fh.read() == b"2"
    cdn = make_storage(custom_domain="cdn.example.com")
    assert cdn.url("x.txt").startswith("https://cdn.example.com/")


def test_signed_urls_after_fork(make_storage, azure_storage):
    storage = make_storage(expiration_secs=300)
    storage.save("fork.txt", ContentFile(b"forked"))
    storage.url("fork.txt")
    holder_ready, release = threading.Event(), threading.Event()

    def hold_key_lock():  # fork while another thread holds the key cache's lock
        with storage._keys.refresher._lock:
            holder_ready.set()
            release.wait(10)

    holder = threading.Thread(target=hold_key_lock)
    holder.start()
    assert holder_ready.wait(5)

    def child():
        storage._keys.refresher.value = None  # cold in the child: must take the (new) lock
        url = storage.url("fork.txt")
        return {"content": requests.get(url, verify=azure_storage.ca_file, timeout=10).text}

    try:
        result = in_child(child)
    finally:
        release.set()
        holder.join()
    assert result == {"ok": True, "content": "forked"}


def test_delegation_key_repr_hides_the_signing_key(make_storage):
    storage = make_storage(expiration_secs=300)
    storage.url("file.txt")
    key = storage._keys.refresher.value
    assert key.key.value and key.key.value not in repr(key)


def test_every_sdk_call_on_a_request_path_is_bounded_by_timeout(azure_imds, settings):
    """Against a server that never answers, a storage call makes 3 tries of TIMEOUT each (the SDK's defaults
    kept one call busy ~85 s), and a cold url() gives up after TIMEOUT with a message naming it."""
    from django_azure_mi.storage import AzureManagedIdentityStorage

    settings.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 1}
    server = LoopbackServer()
    try:
        options = {"account_url": f"https://127.0.0.1:{server.port}/acct", "azure_container": "media"}
        storage = AzureManagedIdentityStorage(**options)
        client = storage.service_client
        assert client._config.retry_policy.total_retries == 2
        with pytest.raises(Exception, match=r"(?i)timed? ?out"):
            storage.exists("a.txt")
        assert len(server.accepted) == 3
        signer = AzureManagedIdentityStorage(**options, expiration_secs=60)
        with pytest.raises(TimeoutError, match=r"within 1s \(AZURE_MANAGED_IDENTITY\['TIMEOUT'\]\)"):
            signer.url("a.txt")
        # the user's own client_options win
        mine = AzureManagedIdentityStorage(**options, client_options={"retry_total": 0, "read_timeout": 7})
        assert mine.service_client._config.retry_policy.total_retries == 0
    finally:
        server.close()
