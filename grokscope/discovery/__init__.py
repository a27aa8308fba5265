"""Edge-level circuit discovery on any TransformerBridge model; names no task.

- :mod:`.graph`: the component graph (:class:`ComponentGraph`: writers, readers, edges);
- :mod:`.shapes`: which model shapes the graph describes (GPT-2, GPT-NeoX, Llama/Qwen2 GQA, attention-only);
- :mod:`.edges`: edges patched and differentiated through hooks; :mod:`.batched`: many patched runs;
- :mod:`.inputs`: a researcher's prompts (strings, padded token ids) as a :class:`Corruption`;
- :mod:`.scores`: :class:`Corruption`, :func:`score_edges` (EAP, EAP-IG, exact), :func:`register_method`;
- :mod:`.methods`: EAP-IG on activations, and EAP-IG refined by exact patching of the top edges
  (``eap-ig-activations``, ``eap-ig-exact``);
- :mod:`.mib`: the graph in the EAP-IG / MIB JSON (export a discovery, import a circuit);
- :mod:`.faithfulness`: circuit selection, :func:`faithfulness_curve`, :class:`EdgeCircuit`;
- :mod:`.circuit`: :func:`discover` -> :class:`Discovery` (graph, scores, smallest faithful circuit);
- :mod:`.series`: :func:`discovery_series` (the circuit at every checkpoint, cached).
"""

from grokscope.discovery.circuit import Discovery, describe_edges, discover
from grokscope.discovery.faithfulness import (
    EdgeCircuit,
    FaithfulnessCurve,
    circuit_of_size,
    faithfulness_curve,
    smallest_circuit,
)
from grokscope.discovery.graph import ComponentGraph, GraphNode
from grokscope.discovery.inputs import PromptError, encode
from grokscope.discovery.methods import RefinedScores, ig_activation_scores, refine
from grokscope.discovery.mib import (
    MibFormatError,
    MibGraph,
    from_mib,
    measure_mib,
    read_mib,
    to_mib,
    write_mib,
)
from grokscope.discovery.scores import (
    Corruption,
    EdgeScores,
    prepare,
    register_method,
    score_edges,
    spearman,
    top_overlap,
)
from grokscope.discovery.series import DiscoverySeries, checkpoint_discovery, discovery_series
from grokscope.discovery.shapes import UnsupportedModelError

__all__ = ["ComponentGraph", "GraphNode", "Corruption", "EdgeScores", "prepare", "score_edges", "register_method", "spearman",
           "top_overlap", "EdgeCircuit", "FaithfulnessCurve", "circuit_of_size", "faithfulness_curve",
           "smallest_circuit", "Discovery", "discover", "describe_edges", "DiscoverySeries",
           "checkpoint_discovery", "discovery_series", "encode", "PromptError", "UnsupportedModelError",
           "RefinedScores", "ig_activation_scores", "refine",
           "MibGraph", "MibFormatError", "to_mib", "write_mib", "from_mib", "read_mib", "measure_mib"]
