"""A foreign client of pikett's gRPC contract, written only from the .proto files.

Streams as an agent would (protocol version 2), checks that a result without a status is
refused, reads the host and its fault back through the Admin service, and asks the
standard health and reflection services. Prints one JSON object with what it saw.

Usage: foreign_agent.py STUBS_DIR ADDRESS CA_PEM CLIENT_PEM CLIENT_KEY HOST_ID
"""

import json
import queue
import sys
import time

stubs, address, ca, cert, key, host_id = sys.argv[1:7]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)
from pikett.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


agent_creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
staff_creds = grpc.ssl_channel_credentials(read(ca))
out = {}


def stream(channel, messages, wanted_acks):
    """Sends `messages` on one Ingest stream; returns (welcome, acks, error code or None)."""
    outbox = queue.Queue()
    for m in messages:
        outbox.put(m)

    def requests():
        while True:
            m = outbox.get()
            if m is None:
                return
            yield m

    welcome, acks = None, []
    try:
        for reply in ingest_pb2_grpc.IngestStub(channel).Stream(requests(), timeout=20):
            if reply.HasField("welcome"):
                welcome = reply.welcome
            elif reply.HasField("ack"):
                acks.append(reply.ack.seq)
            if len(acks) >= wanted_acks:
                break
        return welcome, acks, None
    except grpc.RpcError as e:
        return welcome, acks, (e.code().name, e.details())
    finally:
        outbox.put(None)


def hello():
    return ingest_pb2.AgentMessage(
        hello=ingest_pb2.Hello(
            protocol_version=2,
            host_id=host_id,
            agent_version="foreign-python-grpcio",
            capabilities=["checks"],
            min_interval_ms=1000,
            spool_epoch=424242,
        )
    )


def batch(seq, status):
    now = int(time.time() * 1000)
    check = ingest_pb2.CheckResult(name="command/foreign", summary="CRITICAL - said in Python", time_unix_ms=now)
    if status is not None:
        check.status = status
    return ingest_pb2.AgentMessage(
        batch=ingest_pb2.Batch(
            seq=seq,
            created_unix_ms=now,
            checks=[check],
            samples=[
                ingest_pb2.Sample(
                    name="foreign_inlet_temperature",
                    labels={"sensor": "inlet"},
                    value=21.5,
                    unit="Cel",
                    time_unix_ms=now,
                )
            ],
        )
    )


with grpc.secure_channel(address, agent_creds) as channel:
    crit = ingest_pb2.CHECK_STATUS_CRITICAL
    welcome, acks, error = stream(channel, [hello(), batch(1, crit), batch(2, crit)], 2)
    out["welcome_protocol_version"] = welcome.protocol_version if welcome else None
    out["acks"] = acks
    out["stream_error"] = error
    # A result that forgot its status: refused, not read as healthy.
    _, refused_acks, refused = stream(channel, [hello(), batch(3, None)], 1)
    out["unspecified_acks"] = refused_acks
    out["unspecified_error"] = refused

with grpc.secure_channel(address, staff_creds) as channel:
    who = [("x-pikett-user", "foreign-client")]
    admin = admin_pb2_grpc.AdminStub(channel)
    hosts = admin.ListHosts(admin_pb2.ListHostsRequest(), metadata=who, timeout=10)
    out["hosts"] = [h.host_id for h in hosts.hosts]
    deadline = time.time() + 20
    faults = []
    while time.time() < deadline:
        reply = admin.ListFaults(admin_pb2.ListFaultsRequest(host=host_id), metadata=who, timeout=10)
        faults = [{"check": f.check, "severity": f.severity, "state": f.state} for f in reply.faults]
        if faults:
            break
        time.sleep(0.5)
    out["faults"] = faults

    health = health_pb2_grpc.HealthStub(channel)
    out["health"] = {
        name: health_pb2.HealthCheckResponse.ServingStatus.Name(
            health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        )
        for name in ["", "pikett.v1.Ingest", "pikett.v1.Admin"]
    }
    out["reflection_services"] = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())

print(json.dumps(out))
