"""The Terraform module in ``terraform/``: formatting, validation, the rendered policies, and one
real apply against moto followed by a tqsnap save and load through the created roles.

How the module is exercised:

- ``terraform fmt``, ``init`` (from the local plugin directory when there is one) and
  ``validate`` on a copy of ``terraform/`` in a temporary directory, so the checkout stays clean.
- The IAM and bucket policies are read from ``terraform show -json`` of a plan and judged by a
  small IAM evaluator below (explicit deny wins, otherwise an allow is needed; wildcards in
  actions and resources; the condition operators the module uses). Asking "may the writer
  delete a shard?" of the rendered policy catches mistakes that a text search would not.
- One ``terraform apply`` per module run (the plan above, applied as saved), against a moto
  server in this process. It starts in the background as soon as the plan exists, so that
  validate and the plan-only variant run while it waits on the provider. boto3 then checks that
  the bucket, its lifecycle rules, encryption, public access block, bucket policy and the IAM
  roles exist as declared.
- tqsnap then saves through the writer role, loads through the reader role, and forgets and
  collects garbage through the cleanup role. moto accepts any
  credentials and does not evaluate IAM, so a WSGI layer in front of it plays IAM: it maps each
  request to its S3 action, resource and condition keys, and refuses it (403 AccessDenied) unless
  the role's policy allows it and the bucket policy does not deny it. Every request tqsnap makes
  is therefore checked against the policies a real AWS account would enforce. The requests come
  over plain HTTP on loopback; they are judged as if they had used TLS (``aws:SecureTransport``
  true), as they would against AWS, and the TLS statement is tested on its own.
- ``terraform destroy`` at the end of the module.

Time: the AWS provider (5.x) waits for an ``aws_s3_bucket_lifecycle_configuration`` to read back
identically ten times in a row, 5 s apart, after a 10 s delay: about 55 s that no provider
setting shortens (its ``timeouts`` only bound it, and a shorter bound fails the apply). The other
resources are created while it waits, so the apply takes about a minute (70 s on an idle
2-core machine; the whole file about two minutes, the destroy included). ``max_retries = 1``
keeps calls that moto does not implement from being retried with back-off.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO_ROOT = Path(__file__).resolve().parent.parent
TERRAFORM_DIR = REPO_ROOT / "terraform"
TERRAFORM = shutil.which("terraform")
PLUGIN_DIR = Path(os.environ.get("TQSNAP_TF_PLUGIN_DIR", "/opt/tf-plugins"))

PREFIX = "repo"
REGION = "us-east-1"
ADMIN_KEY = "tqsnap-tf-admin"  # terraform and the boto3 checks: passed to moto unjudged
ROLE_KEYS = {"writer": "tqsnap-tf-writer", "reader": "tqsnap-tf-reader", "cleanup": "tqsnap-tf-cleanup"}
GRACE = 6.0  # seconds; the repository the roles are exercised on collects garbage this soon

pytestmark = [
    pytest.mark.skipif(TERRAFORM is None, reason="the terraform binary is not on PATH"),
    pytest.mark.timeout(600),
]


# ---------------------------------------------------------------------------------------------
# A small IAM policy evaluator
# ---------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _condition_holds(operator: str, key: str, expected: list[str], context: dict[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in context.items()}
    present = key.lower() in lowered
    if operator == "Null":
        return (not present) == (expected[0].lower() == "true")
    base, if_exists = (
        (operator[: -len("IfExists")], True) if operator.endswith("IfExists") else (operator, False)
    )
    if not present:
        return if_exists
    actual = lowered[key.lower()]
    if base == "Bool":
        return actual.lower() in [e.lower() for e in expected]
    if base == "StringEquals":
        return actual in expected
    if base == "StringLike":
        return any(_wildcard(e, actual) for e in expected)
    if base == "StringNotLike":
        return not any(_wildcard(e, actual) for e in expected)
    raise NotImplementedError(f"condition operator {operator} is not modelled by this evaluator")


@dataclass
class Statement:
    effect: str
    actions: list[str]
    resources: list[str]
    conditions: dict[str, dict[str, Any]]
    principal: Any = None

    def matches(self, action: str, resource: str, context: dict[str, str]) -> bool:
        if not any(_wildcard(a, action, ignore_case=True) for a in self.actions):
            return False
        if not any(_wildcard(r, resource) for r in self.resources):
            return False
        return all(
            _condition_holds(
                op, key, [str(v).lower() if isinstance(v, bool) else str(v) for v in _as_list(vals)], context
            )
            for op, block in self.conditions.items()
            for key, vals in block.items()
        )


class Policy:
    def __init__(self, document: str | dict[str, Any]) -> None:
        self.document = json.loads(document) if isinstance(document, str) else document
        self.statements = [
            Statement(
                effect=s["Effect"],
                actions=_as_list(s["Action"]),
                resources=_as_list(s["Resource"]),
                conditions=s.get("Condition", {}),
                principal=s.get("Principal"),
            )
            for s in _as_list(self.document["Statement"])
        ]

    def actions(self) -> set[str]:
        return {a for s in self.statements if s.effect == "Allow" for a in s.actions}


def authorize(
    identity: Policy, bucket: Policy | None, action: str, resource: str, context: dict[str, str]
) -> str:
    """``allow``, ``deny`` (an explicit Deny matched) or ``implicit-deny`` (no Allow matched)."""
    bucket_statements = bucket.statements if bucket is not None else []
    for st in [*identity.statements, *bucket_statements]:
        if st.effect == "Deny" and st.matches(action, resource, context):
            return "deny"
    if any(st.effect == "Allow" and st.matches(action, resource, context) for st in identity.statements):
        return "allow"
    return "implicit-deny"


TLS = {"aws:SecureTransport": "true"}


def _obj(key: str, bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


# ---------------------------------------------------------------------------------------------
# moto in this process, behind a layer that plays IAM for the role keys
# ---------------------------------------------------------------------------------------------


@dataclass
class S3Request:
    key_id: str
    method: str
    bucket: str
    key: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    checks: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    verdict: str = "unjudged"

    def describe(self) -> str:
        q = "&".join(sorted(self.query))
        return f"{self.method} /{self.bucket}/{self.key}{'?' + q if q else ''}"


def _s3_actions(req: S3Request, body: bytes) -> list[tuple[str, str, dict[str, str]]]:
    """The (action, resource, condition keys) that S3 authorizes for one REST request."""
    q, m = req.query, req.method
    bucket_arn = f"arn:aws:s3:::{req.bucket}"
    ctx = dict(TLS)
    if not req.key:
        if m in ("GET", "HEAD") and not (
            set(q)
            - {
                "list-type",
                "prefix",
                "delimiter",
                "max-keys",
                "continuation-token",
                "start-after",
                "encoding-type",
                "fetch-owner",
                "marker",
            }
        ):
            if "prefix" in q:
                ctx["s3:prefix"] = q["prefix"][0]
            return [("s3:ListBucket", bucket_arn, ctx)]  # HeadBucket is authorized as ListBucket
        if m == "GET" and "uploads" in q:
            return [("s3:ListBucketMultipartUploads", bucket_arn, ctx)]
        if m == "POST" and "delete" in q:
            keys = [el.text or "" for el in ET.fromstring(body).iter() if el.tag.endswith("Key")]
            return [("s3:DeleteObject", f"{bucket_arn}/{k}", dict(ctx)) for k in keys]
        return [(f"s3:<bucket {m} {'&'.join(sorted(q))}>", bucket_arn, ctx)]
    resource = f"{bucket_arn}/{req.key}"
    conditional = {"s3:if-none-match": req.headers["if-none-match"]} if "if-none-match" in req.headers else {}
    copy_source = req.headers.get("x-amz-copy-source")
    extra = []
    if copy_source:
        extra = [
            ("s3:GetObject", "arn:aws:s3:::" + unquote(copy_source).lstrip("/").split("?")[0], dict(ctx))
        ]
    if m in ("GET", "HEAD") and not q.keys() - {"partNumber", "versionId", "range"}:
        return [("s3:GetObject", resource, ctx)]
    if m == "GET" and "uploadId" in q:
        return [("s3:ListMultipartUploadParts", resource, ctx)]
    if m == "PUT" and "uploadId" in q and "partNumber" in q:
        return [("s3:PutObject", resource, {**ctx, "s3:ObjectCreationOperation": "false"}), *extra]
    if m == "PUT" and not q:
        return [
            ("s3:PutObject", resource, {**ctx, **conditional, "s3:ObjectCreationOperation": "true"}),
            *extra,
        ]
    if m == "POST" and "uploads" in q:
        return [("s3:PutObject", resource, {**ctx, "s3:ObjectCreationOperation": "false"})]
    if m == "POST" and "uploadId" in q:
        return [("s3:PutObject", resource, {**ctx, **conditional, "s3:ObjectCreationOperation": "true"})]
    if m == "DELETE" and "uploadId" in q:
        return [("s3:AbortMultipartUpload", resource, ctx)]
    if m == "DELETE" and not q:
        return [("s3:DeleteObject", resource, ctx)]
    return [(f"s3:<object {m} {'&'.join(sorted(q))}>", resource, ctx)]


_CREDENTIAL = re.compile(r"Credential=([^/]+)/")


class IamEmulator:
    """WSGI middleware: judges requests signed with a role key, records every request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.roles: dict[str, Policy] = {}  # access key id -> identity policy
        self.bucket_policy: Policy | None = None
        self.requests: list[S3Request] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(k):
                headers[k.replace("_", "-").lower()] = environ[k]
        auth = headers.get("authorization", "")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        found = _CREDENTIAL.search(auth) or _CREDENTIAL.search(
            "Credential=" + query.get("X-Amz-Credential", [""])[0]
        )
        key_id = found.group(1) if found else ""
        policy = self.roles.get(key_id)
        if policy is None or headers.get("host", "").split(":")[0] not in ("127.0.0.1", "localhost"):
            return self.app(environ, start_response)

        bucket, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
        req = S3Request(key_id, environ["REQUEST_METHOD"], bucket, key, query, headers)
        body = b""
        if req.method == "POST" and "delete" in query:
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
        req.checks = _s3_actions(req, body)
        verdicts = [authorize(policy, self.bucket_policy, *check) for check in req.checks]
        req.verdict = (
            "allow" if all(v == "allow" for v in verdicts) else next(v for v in verdicts if v != "allow")
        )
        with self._lock:
            self.requests.append(req)
        if req.verdict != "allow":
            message = f"emulated IAM: {req.verdict} for {[c[0] for c in req.checks]} on {req.describe()}"
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>'
                + message.encode().replace(b"&", b"&amp;").replace(b"<", b"&lt;")
                + b"</Message></Error>"
            )
            start_response(
                "403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))]
            )
            return [b"" if req.method == "HEAD" else payload]
        return self.app(environ, start_response)

    def judged(self, role: str) -> list[S3Request]:
        with self._lock:
            return [r for r in self.requests if r.key_id == ROLE_KEYS[role]]


@dataclass
class MotoServer:
    endpoint_url: str
    iam: IamEmulator
    _server: Any
    _thread: threading.Thread

    def client(self, service: str, key_id: str = ADMIN_KEY) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key="secret",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """moto on a free loopback port in this process, behind the IAM emulator."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):  # type: ignore[misc, valid-type]
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    iam = IamEmulator(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, iam, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-terraform", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=5):
        pass
    moto = MotoServer(f"http://{host}:{port}", iam, server, thread)
    yield moto
    moto.stop()


# ---------------------------------------------------------------------------------------------
# terraform
# ---------------------------------------------------------------------------------------------


class Terraform:
    """One working copy of ``terraform/``, initialised, with the example as working directory."""

    def __init__(self, scratch: Path) -> None:
        shutil.copytree(
            TERRAFORM_DIR,
            scratch / "terraform",
            ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl", "*.tfplan"),
        )
        self.workdir = scratch / "terraform" / "examples" / "basic"
        self.timings: list[tuple[str, float]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TF_VAR_", "TF_CLI_ARGS"))}
        env.update(
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            AWS_ACCESS_KEY_ID=ADMIN_KEY,
            AWS_SECRET_ACCESS_KEY="secret",
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
        )
        config = env.get("TF_CLI_CONFIG_FILE")
        if config is not None and not Path(config).exists():
            empty = scratch / "terraformrc"
            empty.write_text("")
            env["TF_CLI_CONFIG_FILE"] = str(empty)
        self.env = env
        init = ["init", "-input=false", "-backend=false"]
        if PLUGIN_DIR.is_dir():
            init.append(f"-plugin-dir={PLUGIN_DIR}")
        self.run(*init)

    def _argv(self, args: tuple[str, ...]) -> list[str]:
        assert TERRAFORM is not None
        return [TERRAFORM, *args, "-no-color"]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = subprocess.run(
            self._argv(args), cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        self.timings.append((args[0], time.monotonic() - started))
        if check and proc.returncode != 0:
            pytest.fail(f"terraform {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{args[0]}.log", "wb")
        try:
            return subprocess.Popen(
                self._argv(args), cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()

    def show_plan(self, plan: str) -> dict[str, Any]:
        return json.loads(self.run("show", "-json", plan).stdout)

    def write_vars(self, name: str, **values: Any) -> str:
        path = self.workdir / f"{name}.tfvars.json"
        path.write_text(json.dumps(values, indent=2))
        return path.name


def _module_resources(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Planned resources of the snapshot_bucket module by address, e.g. ``aws_iam_policy.this["writer"]``."""
    out: dict[str, dict[str, Any]] = {}

    def walk(module: dict[str, Any]) -> None:
        for res in module.get("resources", []):
            address = res["address"]
            out[address.split(".", 2)[-1] if address.startswith("module.") else address] = res["values"]
        for child in module.get("child_modules", []):
            walk(child)

    walk(plan["planned_values"]["root_module"])
    return out


@pytest.fixture(scope="module")
def tf_static(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    """A working copy for validate and plan-only variants; they may run while the apply does."""
    return Terraform(tmp_path_factory.mktemp("terraform-static"))


@pytest.fixture(scope="module")
def bucket_name() -> str:
    return f"tqsnap-tf-{uuid.uuid4().hex[:12]}"


@dataclass
class Applied:
    outputs: dict[str, Any]
    apply_s: float


class Deployment:
    """The one apply of this module run, in its own working copy, and its destroy.

    The apply is started in the background as soon as its plan exists: the provider spends most
    of it waiting on the lifecycle configuration, and the plan-only tests run meanwhile.
    """

    def __init__(self, tf: Terraform, moto: MotoServer, bucket: str) -> None:
        self.tf, self.moto, self.bucket = tf, moto, bucket
        self.varfile = tf.write_vars(
            "moto",
            bucket_name=bucket,
            prefix=PREFIX,
            endpoint_url=moto.endpoint_url,
            max_retries=1,
            force_destroy=True,
            versioning_enabled=True,
            trusted_principal_arns=["arn:aws:iam::123456789012:root"],
            trusted_services=["ec2.amazonaws.com"],
        )
        self.planned = False
        self.job: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.result: Applied | None = None

    def plan(self) -> dict[str, Any]:
        self.tf.run("plan", "-input=false", f"-var-file={self.varfile}", "-out=moto.tfplan")
        self.planned = True
        return self.tf.show_plan("moto.tfplan")

    def start_apply(self) -> None:
        if self.job is None:
            self.started = time.monotonic()
            self.job = self.tf.start("apply", "-input=false", "-auto-approve", "moto.tfplan")

    def wait_applied(self, timeout: float = 480) -> Applied:
        if self.result is None:
            self.start_apply()
            assert self.job is not None
            rc = self.job.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
            apply_s = time.monotonic() - self.started
            self.tf.timings.append(("apply", apply_s))
            log = (self.tf.workdir / "apply.log").read_text()
            if rc != 0:
                pytest.fail(f"terraform apply exited {rc}\n{log}")
            print(f"terraform apply against moto took {apply_s:.1f}s")
            outputs = {k: v["value"] for k, v in json.loads(self.tf.run("output", "-json").stdout).items()}
            self.result = Applied(outputs, apply_s)
        return self.result

    def destroy(self) -> None:
        if self.job is None:
            return
        if self.job.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.job.wait(timeout=480)
        self._empty_bucket()
        destroy = self.tf.run(
            "destroy",
            "-input=false",
            "-auto-approve",
            "-refresh=false",
            f"-var-file={self.varfile}",
            timeout=300,
            check=False,
        )
        assert destroy.returncode == 0, f"terraform destroy failed\n{destroy.stdout}\n{destroy.stderr}"
        with pytest.raises(ClientError):
            self.moto.client("s3").head_bucket(Bucket=self.bucket)
        assert self.moto.client("iam").list_roles()["Roles"] == []
        print("terraform timings: " + ", ".join(f"{cmd} {secs:.1f}s" for cmd, secs in self.tf.timings))

    def _empty_bucket(self) -> None:
        """Delete every object version and delete marker while versioning is still on.

        The destroy suspends versioning before it deletes the bucket, and moto (5.2) then fails
        with a 500 when force_destroy empties a bucket that holds delete markers (left by gc).
        moto also refuses each key of a DeleteObjects while the bucket policy is in place (see
        :func:`_iam_enforced`), so the policy is lifted for this and put back for the destroy.
        """
        s3 = self.moto.client("s3")
        try:
            policy = s3.get_bucket_policy(Bucket=self.bucket)["Policy"]
        except ClientError:
            return  # the apply did not get this far
        s3.delete_bucket_policy(Bucket=self.bucket)
        try:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket):
                items = [
                    {"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                if items:
                    errors = s3.delete_objects(Bucket=self.bucket, Delete={"Objects": items}).get("Errors")
                    assert not errors, errors
        finally:
            s3.put_bucket_policy(Bucket=self.bucket, Policy=policy)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, moto: MotoServer, bucket_name: str
) -> Iterator[Deployment]:
    d = Deployment(Terraform(tmp_path_factory.mktemp("terraform-apply")), moto, bucket_name)
    try:
        yield d
    finally:
        if d.job is not None and d.job.poll() is None and d.result is None:
            d.job.wait(timeout=480)
        d.destroy()


@pytest.fixture(scope="module")
def plan(deployment: Deployment, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The plan that the apply carries out (SSE-S3, versioning on, prefix ``repo``)."""
    planned = deployment.plan()
    if any("applied" in getattr(item, "fixturenames", ()) for item in request.session.items):
        deployment.start_apply()
    return planned


@pytest.fixture(scope="module")
def applied(deployment: Deployment, plan: dict[str, Any]) -> Applied:
    return deployment.wait_applied()


@pytest.fixture(scope="module")
def kms_plan(tf_static: Terraform) -> dict[str, Any]:
    """A second variant, planned only: SSE-KMS, no versioning, repository at the bucket root,
    policies without roles."""
    varfile = tf_static.write_vars(
        "kms",
        bucket_name="tqsnap-tf-kms",
        prefix="",
        endpoint_url="http://127.0.0.1:9",
        max_retries=1,
        versioning_enabled=False,
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555",
        create_roles=False,
    )
    tf_static.run("plan", "-input=false", f"-var-file={varfile}", "-out=kms.tfplan")
    return tf_static.show_plan("kms.tfplan")


# ---------------------------------------------------------------------------------------------
# Static checks (validate and the README run later, beside the apply)
# ---------------------------------------------------------------------------------------------


def test_fmt() -> None:
    assert TERRAFORM is not None
    proc = subprocess.run(
        [TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
        capture_output=True,
        text=True,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


# ---------------------------------------------------------------------------------------------
# Policies, as planned
# ---------------------------------------------------------------------------------------------


def _role_policies(plan: dict[str, Any]) -> dict[str, Policy]:
    res = _module_resources(plan)
    return {role: Policy(res[f'aws_iam_policy.this["{role}"]']["policy"]) for role in ROLE_KEYS}


def _bucket_policy(plan: dict[str, Any]) -> Policy:
    return Policy(_module_resources(plan)["aws_s3_bucket_policy.this[0]"]["policy"])


def test_writer_policy_cannot_delete(plan: dict[str, Any], bucket_name: str) -> None:
    writer = _role_policies(plan)["writer"]
    assert not any(_wildcard(a, "s3:DeleteObject", ignore_case=True) for a in writer.actions())
    assert not any(_wildcard(a, "s3:DeleteObjectVersion", ignore_case=True) for a in writer.actions())
    b, p = bucket_name, PREFIX

    def may(action: str, resource: str, **ctx: str) -> bool:
        return authorize(writer, None, action, resource, {**TLS, **ctx}) == "allow"

    for key in (
        "shards/ab/ab12.u1",
        "shards/ab/ab12.u1.zst",
        "snapshots/run/00000000000000000001.json",
        "tqsnap.json",
        "tags/best.json",
    ):
        assert may("s3:PutObject", _obj(f"{p}/{key}", b)), key
        assert not may("s3:DeleteObject", _obj(f"{p}/{key}", b)), key
    assert may("s3:GetObject", _obj(f"{p}/tombstones/run/00000000000000000001.json", b))
    assert may("s3:AbortMultipartUpload", _obj(f"{p}/shards/ab/ab12.u1", b))
    assert may("s3:ListMultipartUploadParts", _obj(f"{p}/shards/ab/ab12.u1", b))
    assert may("s3:ListBucket", f"arn:aws:s3:::{b}", **{"s3:prefix": f"{p}/snapshots/run/"})
    # Scoped to the prefix, and no tombstones: forgetting is the cleanup role's job.
    assert not may("s3:PutObject", _obj(f"{p}/tombstones/run/00000000000000000001.json", b))
    assert not may("s3:PutObject", _obj("elsewhere/x", b))
    assert not may("s3:GetObject", _obj("elsewhere/x", b))
    assert not may("s3:GetObject", _obj(f"{p}-other/tqsnap.json", b))
    assert not may("s3:ListBucket", f"arn:aws:s3:::{b}", **{"s3:prefix": "elsewhere/"})
    assert not may("s3:ListBucket", f"arn:aws:s3:::{b}")
    assert not may("s3:PutObject", _obj(f"{p}/shards/x", "another-bucket"))


def test_reader_policy_is_read_only(plan: dict[str, Any], bucket_name: str) -> None:
    reader = _role_policies(plan)["reader"]
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:PutObjectAcl"):
        assert not any(_wildcard(a, action, ignore_case=True) for a in reader.actions()), action
    b, p = bucket_name, PREFIX
    assert authorize(reader, None, "s3:GetObject", _obj(f"{p}/shards/ab/ab12.u1", b), TLS) == "allow"
    assert (
        authorize(reader, None, "s3:ListBucket", f"arn:aws:s3:::{b}", {**TLS, "s3:prefix": f"{p}/"})
        == "allow"
    )
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert authorize(reader, None, action, _obj(f"{p}/snapshots/run/1.json", b), TLS) == "implicit-deny"
    assert authorize(reader, None, "s3:GetObject", _obj("elsewhere/x", b), TLS) == "implicit-deny"


def test_cleanup_policy_can_delete_garbage_only(plan: dict[str, Any], bucket_name: str) -> None:
    cleanup = _role_policies(plan)["cleanup"]
    b, p = bucket_name, PREFIX

    def may(action: str, key: str) -> bool:
        return authorize(cleanup, None, action, _obj(key, b), TLS) == "allow"

    for key in (
        "shards/ab/ab12.u1",
        "snapshots/run/00000000000000000001.json",
        "tombstones/run/00000000000000000001.json",
    ):
        assert may("s3:DeleteObject", f"{p}/{key}"), key
        assert may("s3:GetObject", f"{p}/{key}"), key
    assert may("s3:PutObject", f"{p}/tombstones/run/00000000000000000001.json")
    for key in ("shards/ab/ab12.u1", "snapshots/run/00000000000000000001.json", "tqsnap.json", "tags/a.json"):
        assert not may("s3:PutObject", f"{p}/{key}"), key
    assert not may("s3:DeleteObject", f"{p}/tqsnap.json")
    assert not may("s3:DeleteObject", f"{p}/tags/a.json")
    assert not may("s3:DeleteObject", "elsewhere/shards/x")
    assert (
        authorize(cleanup, None, "s3:ListBucket", f"arn:aws:s3:::{b}", {**TLS, "s3:prefix": f"{p}/shards/"})
        == "allow"
    )


def test_bucket_policy_denies_plain_http_and_unconditional_commits(
    plan: dict[str, Any], bucket_name: str
) -> None:
    bucket = _bucket_policy(plan)
    allow_all = Policy({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    b, p = bucket_name, PREFIX

    def verdict(action: str, key: str | None, **ctx: str) -> str:
        resource = f"arn:aws:s3:::{b}" if key is None else _obj(key, b)
        return authorize(allow_all, bucket, action, resource, ctx)

    # TLS only: even a fully privileged principal is refused over plain HTTP.
    assert verdict("s3:GetObject", f"{p}/tqsnap.json", **{"aws:SecureTransport": "false"}) == "deny"
    assert verdict("s3:ListBucket", None, **{"aws:SecureTransport": "false"}) == "deny"
    assert verdict("s3:GetObject", f"{p}/tqsnap.json", **TLS) == "allow"

    create = {**TLS, "s3:ObjectCreationOperation": "true"}
    for key in ("tqsnap.json", "snapshots/run/00000000000000000007.json", "tags/best.json"):
        # PutObject / CompleteMultipartUpload without If-None-Match would overwrite a commit.
        assert verdict("s3:PutObject", f"{p}/{key}", **create) == "deny", key
        assert verdict("s3:PutObject", f"{p}/{key}", **create, **{"s3:if-none-match": "*"}) == "allow", key
        # CreateMultipartUpload / UploadPart cannot carry the header and are exempt.
        assert (
            verdict("s3:PutObject", f"{p}/{key}", **TLS, **{"s3:ObjectCreationOperation": "false"}) == "allow"
        )
    # Shards go to fresh keys and need no condition; tombstones are outside the rule.
    assert verdict("s3:PutObject", f"{p}/shards/ab/ab12.u1", **create) == "allow"
    assert verdict("s3:PutObject", f"{p}/tombstones/run/1.json", **create) == "allow"


def test_planned_bucket_configuration(plan: dict[str, Any]) -> None:
    res = _module_resources(plan)
    access = res["aws_s3_bucket_public_access_block.this"]
    assert all(
        access[k]
        for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
    )
    (sse_rule,) = res["aws_s3_bucket_server_side_encryption_configuration.this"]["rule"]
    assert sse_rule["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "AES256"
    assert res["aws_s3_bucket_versioning.this[0]"]["versioning_configuration"][0]["status"] == "Enabled"
    rules = {r["id"]: r for r in res["aws_s3_bucket_lifecycle_configuration.this"]["rule"]}
    assert (
        rules["abort-incomplete-multipart-uploads"]["abort_incomplete_multipart_upload"][0][
            "days_after_initiation"
        ]
        == 2
    )
    assert rules["expire-noncurrent-versions"]["noncurrent_version_expiration"][0]["noncurrent_days"] == 30
    assert all(r["filter"][0]["prefix"] == f"{PREFIX}/" for r in rules.values())


def test_validate(tf_static: Terraform) -> None:
    proc = tf_static.run("validate", "-json", check=False)
    report = json.loads(proc.stdout)
    assert report["valid"], report
    assert report["warning_count"] == 0, report["diagnostics"]


def test_module_has_readme_for_every_variable_and_output() -> None:
    module = TERRAFORM_DIR / "modules" / "snapshot-bucket"
    readme = (module / "README.md").read_text()
    names = re.findall(
        r'^(?:variable|output) "([^"]+)"',
        (module / "variables.tf").read_text() + (module / "outputs.tf").read_text(),
        re.M,
    )
    assert names
    missing = [n for n in names if f"`{n}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_kms_variant(kms_plan: dict[str, Any]) -> None:
    res = _module_resources(kms_plan)
    key = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    (sse_rule,) = res["aws_s3_bucket_server_side_encryption_configuration.this"]["rule"]
    assert sse_rule["apply_server_side_encryption_by_default"][0] == {
        "sse_algorithm": "aws:kms",
        "kms_master_key_id": key,
    }
    assert sse_rule["bucket_key_enabled"] is True
    assert "aws_s3_bucket_versioning.this[0]" not in res
    (rule,) = res["aws_s3_bucket_lifecycle_configuration.this"]["rule"]
    assert rule["id"] == "abort-incomplete-multipart-uploads"
    policies = _role_policies(kms_plan)
    kms = {
        role: {a for s in pol.statements if key in s.resources for a in s.actions}
        for role, pol in policies.items()
    }
    assert kms == {
        "writer": {"kms:GenerateDataKey", "kms:Decrypt"},
        "reader": {"kms:Decrypt"},
        "cleanup": {"kms:GenerateDataKey", "kms:Decrypt"},
    }
    # At the bucket root: objects anywhere in the bucket, listing without a prefix condition.
    writer = policies["writer"]
    assert (
        authorize(writer, None, "s3:PutObject", "arn:aws:s3:::tqsnap-tf-kms/snapshots/s/1.json", TLS)
        == "allow"
    )
    assert authorize(writer, None, "s3:ListBucket", "arn:aws:s3:::tqsnap-tf-kms", TLS) == "allow"
    bucket = _bucket_policy(kms_plan)
    deny = next(s for s in bucket.statements if s.effect == "Deny" and "s3:PutObject" in s.actions)
    assert "arn:aws:s3:::tqsnap-tf-kms/snapshots/*" in deny.resources
    # create_roles = false: the three policies, no roles, no attachments, null role outputs.
    assert not [a for a in res if a.startswith(("aws_iam_role.", "aws_iam_role_policy_attachment."))]
    assert sorted(a for a in res if a.startswith("aws_iam_policy.")) == [
        f'aws_iam_policy.this["{r}"]' for r in sorted(ROLE_KEYS)
    ]
    outputs = kms_plan["planned_values"]["outputs"]
    assert outputs["role_arns"]["value"] == {}
    assert all(outputs[f"{r}_role_arn"].get("value") is None for r in ROLE_KEYS)


# ---------------------------------------------------------------------------------------------
# The real apply
# ---------------------------------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.slow
def test_apply_creates_declared_resources(applied: Applied, moto: MotoServer, bucket_name: str) -> None:
    out = applied.outputs
    assert out["bucket_name"] == bucket_name
    assert out["repository_url"] == f"s3://{bucket_name}/{PREFIX}"
    assert out["bucket_arn"] == f"arn:aws:s3:::{bucket_name}"
    s3 = moto.client("s3")
    s3.head_bucket(Bucket=bucket_name)

    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket_name)["Rules"]}
    assert rules == {
        "abort-incomplete-multipart-uploads": {
            "ID": "abort-incomplete-multipart-uploads",
            "Filter": {"Prefix": f"{PREFIX}/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
        },
        "expire-noncurrent-versions": {
            "ID": "expire-noncurrent-versions",
            "Filter": {"Prefix": f"{PREFIX}/"},
            "Status": "Enabled",
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
    }
    (sse,) = s3.get_bucket_encryption(Bucket=bucket_name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert sse["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert s3.get_public_access_block(Bucket=bucket_name)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert s3.get_bucket_versioning(Bucket=bucket_name)["Status"] == "Enabled"
    assert s3.get_bucket_ownership_controls(Bucket=bucket_name)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}
    ]
    live_policy = json.loads(s3.get_bucket_policy(Bucket=bucket_name)["Policy"])
    assert Policy(live_policy).statements == Policy(out["bucket_policy_json"]).statements
    assert {s["Sid"] for s in live_policy["Statement"]} == {
        "DenyInsecureTransport",
        "DenyUnconditionalCommitWrites",
    }

    iam = moto.client("iam")
    assert set(out["role_arns"]) == set(ROLE_KEYS)
    for role, arn in out["role_arns"].items():
        name = arn.rsplit("/", 1)[1]
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        if isinstance(trust, str):
            trust = json.loads(unquote(trust))
        assert trust["Statement"][0]["Action"] == "sts:AssumeRole"
        assert trust["Statement"][0]["Principal"] == {
            "AWS": "arn:aws:iam::123456789012:root",
            "Service": "ec2.amazonaws.com",
        }
        (attached,) = iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
        assert attached["PolicyArn"] == out["policy_arns"][role]
        meta = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        doc = iam.get_policy_version(PolicyArn=attached["PolicyArn"], VersionId=meta["DefaultVersionId"])
        document = doc["PolicyVersion"]["Document"]
        if isinstance(document, str):
            document = json.loads(unquote(document))
        assert Policy(document).statements == Policy(out["policy_json"][role]).statements


@contextlib.contextmanager
def _iam_enforced(moto: MotoServer, applied: Applied, bucket: str) -> Iterator[None]:
    """Judge the role keys by the applied policies for the duration of the block.

    moto's own bucket-policy check treats any statement whose condition keys it cannot evaluate
    as a deny, so with this bucket policy in place it refuses every object request. The policy
    is lifted from moto for the block (and put back after it) while the emulator enforces it.
    """
    s3 = moto.client("s3")
    live = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    moto.iam.bucket_policy = Policy(live)
    moto.iam.roles = {ROLE_KEYS[r]: Policy(doc) for r, doc in applied.outputs["policy_json"].items()}
    s3.delete_bucket_policy(Bucket=bucket)
    try:
        yield
    finally:
        moto.iam.roles = {}
        s3.put_bucket_policy(Bucket=bucket, Policy=live)


def _role_options(moto: MotoServer, role: str) -> dict[str, Any]:
    return {
        "endpoint_url": moto.endpoint_url,
        "aws_access_key_id": ROLE_KEYS[role],
        "aws_secret_access_key": "secret",
        "region": REGION,
        "retries": 0,
    }


@pytest.mark.s3
@pytest.mark.slow
def test_tqsnap_through_the_roles(applied: Applied, moto: MotoServer, bucket_name: str) -> None:
    """init + save as writer, load as reader, forget + gc as cleanup: every request allowed."""
    import torch

    import tqsnap

    url = applied.outputs["repository_url"]
    writer, reader, cleanup = (_role_options(moto, r) for r in ("writer", "reader", "cleanup"))
    with _iam_enforced(moto, applied, bucket_name):
        # Short gc timings so that the forgotten snapshot can be collected within the test.
        tqsnap.init_repo(url, grace=GRACE, max_write_duration=GRACE / 2.5, storage_options=writer)
        tqsnap.save(url, {"w": torch.arange(10), "old": torch.zeros(4)}, stream="tf", storage_options=writer)
        # Retention orders snapshots by started_at, each save's own estimate of server time from
        # the 1 s Date header; two saves well under a second apart may come out in either order.
        time.sleep(2.0)
        tqsnap.save(url, {"w": torch.arange(10), "b": torch.ones(3)}, stream="tf", storage_options=writer)
        first = tqsnap.load(url, stream="tf", snapshot=1, storage_options=reader)
        latest = tqsnap.load(url, stream="tf", storage_options=reader)
        assert set(first) == {"w", "old"} and torch.equal(first["w"], torch.arange(10))
        assert torch.equal(latest["w"], torch.arange(10)) and torch.equal(latest["b"], torch.ones(3))

        report = tqsnap.forget(url, keep_last=1, storage_options=cleanup)
        assert report.tombstones_written == 1, report.decisions
        time.sleep(GRACE + 1.5)
        gc = tqsnap.gc(url, storage_options=cleanup)
        assert gc.tombstones_deleted == 1 and len(gc.manifests_finalised) == 1, gc
        # init probed the store as the writer, which may not delete: the cleanup role removed its objects.
        assert gc.probe_objects_deleted > 0, gc
        latest = tqsnap.load(url, stream="tf", storage_options=reader)
        assert torch.equal(latest["b"], torch.ones(3))
        with pytest.raises(tqsnap.errors.TqsnapError):
            tqsnap.load(url, stream="tf", snapshot=1, storage_options=reader)

        # Every request tqsnap made was one its role may make.
        refused = [
            (role, r.describe(), r.verdict, [c[0] for c in r.checks])
            for role in ROLE_KEYS
            for r in moto.iam.judged(role)
            if r.verdict != "allow"
        ]
        assert not refused, f"tqsnap made requests its role may not make: {refused}"
        assert {r.method for r in moto.iam.judged("reader")} <= {"GET", "HEAD"}
        commits = [
            r
            for r in moto.iam.judged("writer")
            if r.method == "PUT"
            and not r.query
            and re.search(r"(^|/)(snapshots/|tags/|tqsnap\.json$)", r.key)
        ]
        assert len(commits) == 3, [r.describe() for r in moto.iam.judged("writer")]  # config + two manifests
        assert all(r.headers.get("if-none-match") == "*" for r in commits), [r.describe() for r in commits]
        assert any(r.method == "POST" and "delete" in r.query for r in moto.iam.judged("cleanup"))

        # The reader cannot save, the writer cannot delete, and nobody overwrites a commit.
        with pytest.raises(tqsnap.errors.AccessDeniedError):
            tqsnap.save(url, {"w": torch.zeros(2)}, stream="tf", storage_options=reader)
        writer_s3 = moto.client("s3", ROLE_KEYS["writer"])
        objects = moto.client("s3").list_objects_v2(Bucket=bucket_name, Prefix=f"{PREFIX}/")["Contents"]
        shard = next(o["Key"] for o in objects if "/shards/" in o["Key"])
        commit = next(o["Key"] for o in objects if "/snapshots/" in o["Key"])
        for call in (
            lambda: writer_s3.delete_object(Bucket=bucket_name, Key=shard),
            lambda: writer_s3.put_object(Bucket=bucket_name, Key=commit, Body=b"{}"),
            lambda: moto.client("s3", ROLE_KEYS["cleanup"]).put_object(
                Bucket=bucket_name, Key=commit, Body=b"{}"
            ),
        ):
            with pytest.raises(ClientError) as denied:
                call()
            assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert torch.equal(tqsnap.load(url, stream="tf", storage_options=reader)["b"], torch.ones(3))
