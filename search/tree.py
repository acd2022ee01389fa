"""A search tree stored as flat arrays (one row per node), grown by doubling.

2000 rollouts of 100+ tokens add hundreds of thousands of nodes, so there is no Python object
per node. Node 0 is the root (the prompt). A node's children are a dense (A,) row of node ids
(-1 where absent): with ~12 actions that is cheaper than any sparse structure and makes the
backup one vectorised row operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOT = 0


@dataclass
class Trajectories:
    """Root-to-terminal paths of a tree, flat per step plus per-path lengths (the HDF5 layout).

    Step t of a path goes s_t -> a_t -> s_{t+1}; per-step arrays describe that step.
    """

    actions: np.ndarray  # (S,) a_t, action indices
    log_prior: np.ndarray  # (S,) log p(a_t | s_t)
    values: np.ndarray  # (S,) V̂(s_{t+1}), the tree's value of the state after the step
    visits: np.ndarray  # (S,) N(s_{t+1})
    lengths: np.ndarray  # (n,) steps per path; S = lengths.sum()
    rewards: np.ndarray  # (n,) r(x) of each terminal
    terminals: np.ndarray  # (n,) node ids of the terminals
    root_value: float  # V̂(s_0)

    def split(self, name: str) -> list[np.ndarray]:
        """One per-step array cut into a list of per-path arrays."""
        return np.split(getattr(self, name), np.cumsum(self.lengths)[:-1])


class Tree:
    """Per node: action from its parent, parent, depth, visits, value V̂, terminal reward, children
    ids, per-action draw counts, virtual visits, and the prior log p(·|s) over all actions (-inf
    where not allowed; NaN until an LM forward has expanded the node)."""

    def __init__(self, n_actions: int, capacity: int = 1024) -> None:
        self.n_actions = n_actions
        self.size = 0
        self._allocate(capacity)
        self.add(parent=-1, action=-1)  # the root

    def _allocate(self, capacity: int) -> None:
        A = self.n_actions
        fresh = {
            "parent": np.full(capacity, -1, np.int32),
            "action": np.full(capacity, -1, np.int8),
            "depth": np.zeros(capacity, np.int32),
            "visits": np.zeros(capacity, np.int32),
            "value": np.zeros(capacity, np.float64),  # V̂(s)
            "reward": np.full(capacity, np.nan, np.float64),  # r(x) at terminals
            "terminal": np.zeros(capacity, bool),
            "children": np.full((capacity, A), -1, np.int32),
            "draws": np.zeros((capacity, A), np.int32),  # times each action was drawn from p at s (DTS weights)
            "pending": np.zeros(capacity, np.int32),  # virtual visits of selections not yet backed up
            "log_prior": np.full((capacity, A), np.nan, np.float64),  # log p(a|s) over actions
            "q": np.full((capacity, A), np.nan, np.float64),  # Q_φ(s, a) of a flow head, when one is used
        }
        for name, array in fresh.items():
            if hasattr(self, name):
                array[: self.size] = getattr(self, name)[: self.size]
            setattr(self, name, array)
        self.capacity = capacity
        self._names = tuple(fresh)

    def add(self, parent: int, action: int) -> int:
        """The child of `parent` by `action`, created if absent; returns its id."""
        if parent >= 0 and self.children[parent, action] >= 0:
            return int(self.children[parent, action])
        if self.size == self.capacity:
            self._allocate(2 * self.capacity)
        node = self.size
        self.size += 1
        self.parent[node], self.action[node] = parent, action
        if parent >= 0:
            self.children[parent, action] = node
            self.depth[node] = self.depth[parent] + 1
        return node

    def path(self, node: int) -> list[int]:
        """Node ids from the root down to `node`, both included."""
        nodes = []
        while node >= 0:
            nodes.append(node)
            node = int(self.parent[node])
        return nodes[::-1]

    def trajectories(self, terminals: np.ndarray | None = None) -> Trajectories:
        """The paths to `terminals` (default: every terminal in the tree, in node order)."""
        if terminals is None:
            terminals = np.flatnonzero(self.terminal[: self.size])
        paths = [self.path(int(node))[1:] for node in terminals]
        nodes = np.concatenate(paths) if paths else np.zeros(0, np.int64)
        actions = self.action[nodes].astype(np.int64)
        return Trajectories(
            actions=actions,
            log_prior=self.log_prior[self.parent[nodes], actions],
            values=self.value[nodes],
            visits=self.visits[nodes],
            lengths=np.array([len(p) for p in paths], dtype=np.int64),
            rewards=self.reward[terminals],
            terminals=np.asarray(terminals, dtype=np.int64),
            root_value=float(self.value[ROOT]),
        )

    def actions_to(self, node: int) -> list[int]:
        """The action sequence that leads from the root to `node`."""
        return [int(self.action[n]) for n in self.path(node)[1:]]

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (capacity, not just used rows)."""
        return sum(getattr(self, n).nbytes for n in self._names)

    def bytes_per_node(self) -> float:
        return self.nbytes / self.capacity

    def stats(self) -> dict[str, float]:
        """Nodes, depth, mean branching of internal nodes, terminals."""
        n = self.size
        n_children = (self.children[:n] >= 0).sum(axis=1)
        internal = n_children > 0
        return {
            "nodes": n,
            "terminals": int(self.terminal[:n].sum()),
            "max_depth": int(self.depth[:n].max()),
            "mean_branching": float(n_children[internal].mean()) if internal.any() else 0.0,
            "bytes_per_node": self.bytes_per_node(),
        }
