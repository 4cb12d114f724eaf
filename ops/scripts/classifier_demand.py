# ruff: noqa: E501  (a data file: one prompt a line)
"""Hand-written TRAINING prompts that say what a prompt demands: chit-chat (simple), expert (complex).

Written for this repository (no outside source). The outcome sources the heads also learn from are
mostly multiple-choice exams and everyday instructions, so an open-ended graduate-level request
("critically compare ...") looked like an easy chat prompt and a greeting had no examples at all.
The EVALUATION prompts are a separate, independently written file
(``tests/data/classifier_demand_heldout.json``); nothing here is used to evaluate.
"""

from __future__ import annotations

CHITCHAT = [
    "hi",
    "hello",
    "hey",
    "hey!",
    "hello!!",
    "hiya",
    "yo",
    "good morning",
    "good evening :)",
    "morning!",
    "how are you?",
    "how's it going?",
    "what's up?",
    "sup",
    "thanks",
    "thank you so much!",
    "thx",
    "ok",
    "ok cool",
    "great, thanks",
    "nice",
    "lol",
    "haha that's funny",
    "bye",
    "see you later",
    "good night",
    "nice to meet you",
    "who are you?",
    "what's your name?",
    "are you a robot?",
    "can you help me?",
    "I'm bored",
    "tell me a joke",
    "tell me something fun",
    "say something nice",
    "how was your day?",
    "do you like music?",
    "what's your favourite colour?",
    "I'm back",
    "hello again",
    "are you there?",
    "test",
    "testing 123",
    "hmm",
    "cool, thanks for the help",
    "that's all for now",
    "you're awesome",
    "happy friday!",
    "merry christmas!",
    "I had a good day today",
    "what should I eat for lunch?",
    "recommend a movie for tonight",
    "is it going to rain today?",
    "what time is it in Tokyo?",
    "how do you say hello in Spanish?",
    "give me a fun fact",
    "good job",
    "sorry, wrong chat",
    "never mind",
    "yes please",
    "no thanks",
    "can we chat for a bit?",
    "what are you up to?",
    "I just got a puppy!",
    "hey, how have you been?",
    "greetings",
    "hello there, friend",
    "what's new?",
]

EXPERT = [
    # mathematics: proofs and research-level derivations
    "Prove that every finite integral domain is a field, and explain where finiteness is essential.",
    "Prove the Cauchy-Schwarz inequality in an arbitrary inner product space and characterise equality.",
    "Give a rigorous proof that the set of real numbers is uncountable using a diagonal argument, then "
    "discuss why the same argument fails for the rationals.",
    "Prove Sylow's first theorem and use it to show that no group of order 45 is simple.",
    "Show that a continuous function on a compact metric space is uniformly continuous; give a "
    "counterexample on a non-compact space.",
    "Derive the Euler-Lagrange equations from the principle of stationary action and apply them to a "
    "double pendulum.",
    "Prove that the spectral radius of a bounded operator equals the limit of ||T^n||^(1/n) (Gelfand's formula).",
    "Prove that a planar graph is 5-colourable, and explain why the four colour theorem needs a different approach.",
    "Establish the convergence rate of gradient descent on an L-smooth, mu-strongly convex function.",
    "Prove the central limit theorem for i.i.d. variables with finite variance using characteristic functions.",
    # statistics and econometrics
    "Derive the asymptotic distribution of the two-stage least squares estimator and state the "
    "assumptions on instrument relevance and exogeneity.",
    "Explain how to identify a causal effect with a regression discontinuity design, including bandwidth "
    "selection and the McCrary density test.",
    "Critically assess difference-in-differences with staggered treatment timing and the "
    "Goodman-Bacon decomposition.",
    "Derive the maximum likelihood estimator for a GARCH(1,1) model and discuss its identification conditions.",
    "Compare fixed effects and random effects panel estimators and explain the logic of the Hausman test.",
    "Show why OLS is inconsistent under measurement error in a regressor and derive the attenuation bias.",
    "Explain the bias-variance trade-off of the lasso versus ridge regression in high dimensions, with "
    "conditions for support recovery.",
    "Design a Bayesian hierarchical model for multi-site clinical trial data and justify your priors.",
    # computer science: systems, theory, security
    "Design a globally distributed, strongly consistent key-value store; discuss consensus, partition "
    "tolerance, and latency trade-offs.",
    "Architect a real-time fraud detection system handling 100k transactions per second, covering "
    "streaming, feature stores and failure modes.",
    "Explain how Raft guarantees log safety during leader changes, and contrast it with Multi-Paxos.",
    "Design a rate limiter for a multi-region API gateway and analyse its behaviour under clock skew.",
    "Prove that the halting problem is undecidable and use a reduction to show that deciding whether a "
    "program ever prints 'hello' is undecidable.",
    "Prove that 3-SAT is NP-complete by reduction from circuit satisfiability.",
    "Analyse the amortised complexity of a splay tree using the potential method.",
    "Prove the IND-CPA security of ElGamal encryption under the decisional Diffie-Hellman assumption.",
    "Give a security proof sketch for HMAC as a pseudorandom function, stating the assumptions on the "
    "compression function.",
    "Explain why textbook RSA is not CCA-secure and how OAEP fixes it, with a reduction argument.",
    "Analyse the forward secrecy and key-compromise impersonation properties of the Signal double ratchet.",
    "Formally model a two-phase commit protocol and show where it blocks under coordinator failure.",
    "Compare the memory models of C++11 and Java, and show a litmus test whose outcomes differ.",
    "Design the storage engine of a time-series database: compression, indexing, compaction and retention.",
    "Derive the backpropagation equations for a transformer attention layer, including layer norm.",
    "Explain the theoretical justification for the evidence lower bound in variational autoencoders and "
    "the cause of posterior collapse.",
    # economics, finance, social science
    "Critically compare monetarist and post-Keynesian accounts of inflation in the 1970s, citing evidence.",
    "Evaluate the empirical evidence on whether minimum wage increases reduce employment, discussing "
    "identification strategies.",
    "Analyse the Modigliani-Miller theorem, the assumptions it relies on, and what its failure implies "
    "for optimal capital structure.",
    "Explain the Black-Scholes derivation via a replicating portfolio and discuss where its "
    "assumptions break down in practice.",
    "Critically evaluate the efficient market hypothesis in light of momentum and value anomalies.",
    "Assess the causes of the eurozone sovereign debt crisis using optimal currency area theory.",
    "Compare Rawls's difference principle with Nozick's entitlement theory as accounts of distributive justice.",
    "Analyse Arrow's impossibility theorem and what it implies for the design of voting systems.",
    "Critically examine the secularisation thesis in the sociology of religion using cross-national evidence.",
    # philosophy, law, history
    "Evaluate Gettier's counterexamples to the justified-true-belief analysis of knowledge and assess "
    "one reliabilist response.",
    "Compare Kant's categorical imperative with rule consequentialism on the problem of lying to a murderer.",
    "Analyse the doctrine of proportionality in the European Court of Human Rights' case law on privacy.",
    "Critically assess the historiographical debate over the causes of the First World War since Fritz Fischer.",
    "Compare the constitutional reasoning in Marbury v. Madison with the German Federal Constitutional "
    "Court's approach to judicial review.",
    "Evaluate competing explanations for the fall of the Western Roman Empire, weighing economic, "
    "military and climatic evidence.",
    # natural sciences and medicine
    "Derive the Schwarzschild metric from Einstein's field equations in vacuum with spherical symmetry.",
    "Explain the BCS theory of superconductivity and how it accounts for the energy gap.",
    "Derive the partition function of the 1D Ising model with a transfer matrix and show there is no phase transition.",
    "Explain the mechanism of CRISPR-Cas9 off-target effects and evaluate strategies to measure and reduce them.",
    "Critically evaluate the evidence for the amyloid hypothesis of Alzheimer's disease after recent antibody trials.",
    "Describe the molecular basis of antibiotic resistance via beta-lactamases and design a study to "
    "track its spread in hospitals.",
    "Explain how to compute the band structure of graphene with a tight-binding model and where the Dirac cones arise.",
    "Compare the thermodynamic and kinetic control of a Diels-Alder reaction and propose an experiment to distinguish them.",
    "Analyse the identification problems in Mendelian randomisation studies, including pleiotropy.",
    "Derive the Navier-Stokes equations from conservation laws and discuss the open regularity problem.",
]
