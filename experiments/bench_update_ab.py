"""CPU time of one rollout and one update, for comparing two versions of rlgeom side by side.

    PYTHONPATH=<checkout A> python experiments/bench_update_ab.py a_1.json
    PYTHONPATH=<checkout B> python experiments/bench_update_ab.py b_1.json   # then A, B again, alternated

For CartPole-v1 and Hopper-v5, PPO (2048 samples, 10 epochs of 64) and TRPO (15 CG steps, 10 critic epochs of
128), 1 env, one thread: after a warm-up learn(2048), three (rollout, update) pairs are timed by process CPU time
(less disturbed than wall time by a co-tenant's load) and the minimum of each is reported in ms.
"""

import json
import sys
import time

import torch

torch.set_num_threads(1)
from rlgeom.agents import PPO, TRPO  # noqa: E402 (after the thread count, as a user script would)


def main(out: str) -> None:
    records = {}
    for env_id in ("CartPole-v1", "Hopper-v5"):
        for name, cls, hp in (("ppo", PPO, dict(batch_size=64, n_epochs=10)),
                              ("trpo", TRPO, dict(batch_size=128, cg_max_steps=15))):
            agent = cls("MlpPolicy", env_id, n_steps=2048, seed=0, device="cpu", **hp)
            agent.learn(2048)
            rollouts, updates = [], []
            for _ in range(3):
                start = time.process_time()
                agent.collect_rollout()
                rollouts.append(time.process_time() - start)
                start = time.process_time()
                agent.update(agent.buffer, 0.5)
                updates.append(time.process_time() - start)
            records[f"{env_id} {name}"] = {"rollout_ms": 1e3 * min(rollouts), "update_ms": 1e3 * min(updates)}
            print(env_id, name, {k: round(v, 1) for k, v in records[f"{env_id} {name}"].items()}, flush=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
