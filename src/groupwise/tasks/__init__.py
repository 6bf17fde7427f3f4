"""Built-in task packs: each one self-contained (rows, its own rewards, its environment, its
defaults), written against the framework interfaces only (:mod:`groupwise.data`,
:mod:`groupwise.rewards`, :mod:`groupwise.envs`) and registered by name where it is defined.

No framework module imports a pack: the registries import them on first lookup from the
manifest, :mod:`groupwise.builtins`. The packs: ``arithmetic`` and ``multiply`` (questions
with a number for an answer), :mod:`~groupwise.tasks.code` (HumanEval, MBPP files, generated
``functions``), :mod:`~groupwise.tasks.dialogue` (requests judged by sentiment),
:mod:`~groupwise.tasks.reasoning_gym` (its generators and verifiers),
:mod:`~groupwise.tasks.guess` (a multi-turn game), :mod:`~groupwise.tasks.calculator` (a tool
and its environment) and :mod:`~groupwise.tasks.toolbox` (the ``counter`` and ``python``
environments). Package ``__init__`` modules stay empty of imports, so importing one module of a
pack registers only what that module defines.
"""
