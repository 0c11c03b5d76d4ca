"""Questions of exercise 10, exercises/10_batch_noise.ipynb.

The noise of the batch statistics: the mean and biased variance of a batch, and their moments
over random batches, checked against exact enumeration of every possible batch.
"""

from __future__ import annotations

import itertools

import numpy as np

from bnbook.grading.checks import Array, Check, Question, StudentCall, compare, unpack


def _population(rng: np.random.Generator, n: int) -> Array:
    return rng.normal(size=n) * rng.uniform(0.5, 3.0) + rng.normal() * 2  # (N,)


def _enumerate(pop: Array, m: int, replace: bool) -> tuple[Array, Array]:
    """Every batch (ordered draws with replacement, or m-subsets without), its mean and var."""
    combos = itertools.product(pop, repeat=m) if replace else itertools.combinations(pop, m)
    batches = np.array(list(combos))  # (B, m); every batch equally likely
    return batches.mean(1), batches.var(1)  # (B,), (B,): biased variance, as BN


def _q_batch_stats() -> Question:
    def one(call: StudentCall, rng: np.random.Generator, n_batches: int, m: int) -> None:
        batches = rng.normal(size=(n_batches, m)) * 2.0 + 1e4 * (m == 2)
        mu, var = unpack(call(batches), 2, "batch_stats")
        ref_mu, ref_var = batches.mean(1), batches.var(1)
        compare(mu, ref_mu, [(batches.mean(0), "you averaged over the batches (axis 0); each "
                              "row is one batch, average over axis 1.")], "mu", rtol=1e-9)
        compare(var, ref_var, [
            (batches.var(1, ddof=1), "you divided by m - 1: BN normalises with the biased "
             "variance, divided by m."),
            (batches.std(1), "you returned the standard deviation, not the variance.")],
            "var", rtol=1e-7, atol=1e-9)

    return Question("q1", "Each batch's mean and variance", "batch_stats", [
        Check("random batches, m = 7", 1, lambda call, rng: one(call, rng, 50, 7)),
        Check("batches of N=2 with mean 1e4", 1, lambda call, rng: one(call, rng, 30, 2))])


def _q_theory() -> Question:
    def one(call: StudentCall, rng: np.random.Generator, n: int, m: int) -> None:
        pop = _population(rng, n)
        mu, var = _enumerate(pop, m, replace=True)
        got = unpack(call(pop, m), 3, "batch_noise_theory")
        s2 = pop.var()
        mu4 = np.mean((pop - pop.mean()) ** 4)
        compare(got[0], np.array(mu.var()), [
            (np.array(s2 / (m - 1)), "Var[mu_B] is sigma^2 / m, with sigma^2 the population "
             "variance divided by N."),
            (np.array(np.sqrt(s2 / m)), "you returned the standard deviation of mu_B, not its "
             "variance.")], "Var[mu_B]", rtol=1e-8)
        compare(got[1], np.array(var.mean()), [
            (np.array(s2), "E[sigma_B^2] is not sigma^2: the biased batch variance is low by "
             "the factor (m - 1) / m.")], "E[sigma_B^2]", rtol=1e-8)
        compare(got[2], np.array(var.var()), [
            (np.array(2 * (m - 1) * s2**2 / m**2), "that is the Gaussian value: Var[sigma_B^2] "
             "depends on the fourth central moment of the population."),
            (np.array((mu4 - (m - 3) / (m - 1) * s2**2) / m), "that is Var of the unbiased "
             "variance; BN's divides by m, so multiply by ((m - 1) / m)^2.")],
            "Var[sigma_B^2]", rtol=1e-8)

    return Question("q2", "Moments of the batch statistics (with replacement)",
                    "batch_noise_theory", [
        Check("random population N = 5, m = 4", 2, lambda call, rng: one(call, rng, 5, 4)),
        Check("population of N=2, m = 3", 1, lambda call, rng: one(call, rng, 2, 3))])


def _q_without_replacement() -> Question:
    def one(call: StudentCall, rng: np.random.Generator, n: int, m: int) -> None:
        pop = _population(rng, n)
        mu, _ = _enumerate(pop, m, replace=False)
        got = call(pop, m)
        s2 = pop.var()
        compare(got, np.array(mu.var()), [
            (np.array(s2 / m), "that is the value with replacement: without replacement "
             "multiply by the finite-population factor (N - m) / (N - 1)."),
            (np.array(s2 / m * (n - m) / n), "the finite-population factor is (N - m) / (N - 1), "
             "not (N - m) / N.")], "Var[mu_B]", rtol=1e-8)

    return Question("q3", "The batch mean's variance within an epoch",
                    "var_of_mean_without_replacement", [
        Check("random population N = 9, m = 4", 1, lambda call, rng: one(call, rng, 9, 4)),
        Check("whole population in one batch (m = N = 6)", 1,
              lambda call, rng: one(call, rng, 6, 6))])


QUESTIONS: list[Question] = [_q_batch_stats(), _q_theory(), _q_without_replacement()]
