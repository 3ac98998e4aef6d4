"""The two session fixtures aiormq 7.2.4's tests use but its PyPI sdist does
not define (upstream's conftest has them): a broker "container" from the Docker
API (docker_api.py here) and its AMQP URL. Loaded with `-p aiormq_fixtures`.
"""
import socket
import time

import pytest
from yarl import URL

from tests.docker_client import DockerClient, check_docker_available


@pytest.fixture(scope="session")
def rabbitmq_container():
    client = DockerClient(check_docker_available())
    info = client.run("mosquito/aiormq-rabbitmq", ["5672/tcp", "5671/tcp", "15672/tcp"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((info.host, info.ports["5672/tcp"]), 1) as s:
                s.send(b"AMQP\x00\x00\x09\x01")
                if len(s.recv(4)) == 4:
                    break
        except OSError:
            time.sleep(0.2)
    yield info
    client.kill(info.id)
    client.remove(info.id)


@pytest.fixture(scope="session")
def amqp_direct_url(rabbitmq_container):
    return URL.build(
        scheme="amqp", user="guest", password="guest", path="//",
        host=rabbitmq_container.host, port=rabbitmq_container.ports["5672/tcp"],
    )
