"""The REST contract under a random seed (printed; `CHATD_FUZZ_SEED=<n>` replays it).

The test is tests/web/test_fuzz_rest.py's contract test with another seed: a file of its
own so that, under `--dist loadfile`, it runs on a different worker than the fixed seed.
"""

from __future__ import annotations

from chatd.server import RunningServer
from tests.web.test_fuzz_rest import check_contract, choose_seed


async def test_the_server_keeps_its_published_contract_under_a_random_seed(
        server: RunningServer) -> None:
    await check_contract(server, choose_seed())
