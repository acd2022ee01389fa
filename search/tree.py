"""A search tree stored as flat arrays (one row per node), grown by doubling.

2000 rollouts of 100+ tokens add hundreds of thousands of nodes, so there is no Python object
per node. Node 0 is the root (the prompt). A node's children are a row of K slots of node ids
(-1 where absent), with the prior log p, the draw counts and Q_φ of each slot beside them, so the
backup is one vectorised row operation.

Dense (K = A, the default): slot a is action a. With ~12 actions that is cheaper than any sparse
structure. Sparse (K = `width` < A): a node keeps only the K actions its prior allows, e.g. the
top k of a full LM vocabulary under `top_k` (where the target is p truncated to its top k, so no
allowed action is lost), in ascending action order; `slot_action` maps slots to actions, and a node
costs O(K) bytes whatever the vocabulary.
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
    """Per node: action from its parent and its slot there, parent, depth, visits, value V̂, terminal
    reward, and per slot: child id, draw count, prior log p(a|s) (-inf where not allowed; NaN until an
    LM forward has expanded the node) and Q_φ; virtual visits.

    Args:
        n_actions: A, the size of the action space (a codec's actions, or an LM's vocabulary).
        capacity: rows allocated at first (doubled when full).
        width: K slots per node; None (dense) is K = A with slot a = action a.
        sparse: store slots sparsely even at K = A (None: sparse iff K < A); the same tree as dense
            storage where every action is allowed, which tests the sparse path.
    """

    def __init__(self, n_actions: int, capacity: int = 1024, width: int | None = None,
                 sparse: bool | None = None) -> None:
        if width is not None and not 1 <= width <= n_actions:
            raise ValueError(f"tree width must be in [1, {n_actions}] (the actions), got {width}")
        self.n_actions = n_actions
        self.width = n_actions if width is None else width
        self.sparse = self.width < n_actions if sparse is None else sparse
        if not self.sparse and self.width < n_actions:
            raise ValueError(f"a dense tree has one slot per action ({n_actions}), not {self.width}")
        self.size = 0
        self._allocate(capacity)
        self.add(parent=-1, slot=-1)  # the root

    def _allocate(self, capacity: int) -> None:
        A = self.width
        fresh = {
            "parent": np.full(capacity, -1, np.int32),
            "action": np.full(capacity, -1, np.int8 if self.n_actions < 128 else np.int32),
            "slot": np.full(capacity, -1, np.int8 if A < 128 else np.int32),  # the action's slot in the parent
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
        if self.sparse:
            fresh["slot_action"] = np.full((capacity, A), -1, np.int32)  # the action of each slot, ascending
        for name, array in fresh.items():
            if hasattr(self, name):
                array[: self.size] = getattr(self, name)[: self.size]
            setattr(self, name, array)
        self.capacity = capacity
        self._names = tuple(fresh)

    def add(self, parent: int, slot: int) -> int:
        """The child of `parent` in `slot`, created if absent; returns its id."""
        if parent >= 0 and self.children[parent, slot] >= 0:
            return int(self.children[parent, slot])
        if self.size == self.capacity:
            self._allocate(2 * self.capacity)
        node = self.size
        self.size += 1
        self.parent[node], self.slot[node] = parent, slot
        if parent >= 0:
            self.action[node] = self.action_of(parent, slot)
            self.children[parent, slot] = node
            self.depth[node] = self.depth[parent] + 1
        return node

    def set_prior(self, node: int, log_prior: np.ndarray, q: np.ndarray | None = None,
                  actions: np.ndarray | None = None) -> None:
        """Expand `node`: its prior log p(·|s) (and Q_φ(s, ·)), -inf where not allowed, over all A actions
        or, for a sparse tree, over `actions` only (a rollout step under top_k, `Rollouts.step_actions`).

        A sparse tree keeps the allowed actions only, in ascending order, in its K slots: more than K
        allowed is an error (truncate the prior to its top K first)."""
        if actions is None:
            actions = np.arange(self.n_actions)
        elif not self.sparse:
            raise ValueError("a dense tree takes the prior over all actions, not over `actions`")
        if not self.sparse:
            self.log_prior[node] = log_prior
            if q is not None:
                self.q[node] = q
            return
        allowed = np.flatnonzero(np.isfinite(log_prior))
        allowed = allowed[np.argsort(actions[allowed], kind="stable")]
        if allowed.size > self.width:
            raise ValueError(f"{allowed.size} actions allowed at a node of a tree {self.width} wide: truncate the "
                             f"prior to its top {self.width} (SearchConfig.top_k)")
        n = allowed.size
        self.slot_action[node, :n], self.slot_action[node, n:] = actions[allowed], -1
        self.log_prior[node, :n], self.log_prior[node, n:] = log_prior[allowed], -np.inf
        if q is not None:
            self.q[node, :n], self.q[node, n:] = q[allowed], 0.0  # finite: -inf log p masks an empty slot

    def action_of(self, node: int, slot: int) -> int:
        """The action in `slot` of `node`."""
        return int(self.slot_action[node, slot]) if self.sparse else slot

    def slot_of(self, node: int, action: int) -> int:
        """The slot of `action` at the expanded `node` (an error if its prior does not allow it)."""
        if not self.sparse:
            return action
        slots = np.flatnonzero(self.slot_action[node] == action)
        if slots.size == 0:
            raise ValueError(f"action {action} is not among node {node}'s {self.width} slots")
        return int(slots[0])

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
            log_prior=self.log_prior[self.parent[nodes], self.slot[nodes].astype(np.int64)],
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
