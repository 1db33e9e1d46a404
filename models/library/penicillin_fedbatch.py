"""Penicillin fed-batch of the Bajpai-Reuss type with temperature, pH and oxygen effects.

Kinetics (Bajpai and Reuss 1980, J. Chem. Technol. Biotechnol. 30:332-344, in the form and
with the constants of PenSim, Birol, Undey and Cinar 2002, Comput. Chem. Eng. 26:1553-1565):

* Contois growth limited by substrate and by dissolved oxygen, scaled by a pH factor and by
  an Arrhenius growth term::

      base = mu_x / (1 + K_1/[H+] + [H+]/K_2) * S / (K_x X + S) * C_L / (K_ox X + C_L)
      mu_g = base * k_g exp(-E_g / R T),   k_death = base * k_d exp(-E_d / R T)

  PenSim writes the net rate mu = mu_g - k_death; here the two are kept apart so that only
  growth consumes substrate and oxygen (dead cells lyse and are not counted as substrate).
* Non-growth-associated penicillin formation with substrate inhibition and an oxygen term::

      q_P = mu_p S / (K_p + S + S^2 / K_I) * C_L^3 / (K_op X + C_L^3)

  which peaks at S = sqrt(K_p K_I), i.e. penicillin forms at low substrate. Penicillin is
  hydrolysed at K P.
* Substrate consumption, g substrate per g biomass per hour::

      sigma = mu_g / Y_xs + q_P / Y_ps + m_x S / (K_m + S)

  The maintenance term saturates in S (K_m, Bajpai and Reuss 1980 as used by Lim et al.
  1986), so substrate cannot be driven negative. Substrate balance of the tank, which the
  tests check: d(S V)/dt = F s_f - sigma X V.
* Oxygen uptake, mmol O2 per g per hour: mu_g / Y_xo + q_P / Y_po + m_o f_O, with the
  PenSim yields read in g per mmol O2 and C_L in mmol/L (saturation C_L* = 1.16 mmol/L as in
  PenSim). The maintenance O2 demand is switched off with the same oxygen factor as growth,
  f_O = C_L / (K_ox X + C_L), so the DO cannot be driven below zero.
* Oxygen transfer: kLa = alpha sqrt(f_g) (P_w / V)^beta (PenSim units: f_g in L/h, P_w in W,
  V in L). Temperature follows its setpoint with a first-order loop (the jacket is not
  modelled); pH is assumed controlled at the parameter value.

Deliberate simplifications against PenSim: no evaporation loss (V changes by feed only), no
heat balance, no empirical CO2 state. Units: time h, concentrations g/L, DO % of C_L*,
volume L, temperature degC (K inside the Arrhenius terms), OUR mmol/L/h.
"""

from __future__ import annotations

from typing import Any

from models import Input, MathNamespace, Model, Output, Parameter, State, Values

BAJPAI = "Bajpai and Reuss (1980) J. Chem. Technol. Biotechnol. 30:332-344"
PENSIM = "Birol, Undey, Cinar (2002) Comput. Chem. Eng. 26:1553-1565 (PenSim), Table 2"
LIM = (
    "Lim, Tayeb, Modak, Bonte (1986) Biotechnol. Bioeng. 28:1408-1420, "
    "maintenance saturation of Bajpai and Reuss (1980)"
)
REACTOR = "100 L pilot fermenter, design value"
CONST = "physical constant (thermochemical calorie)"

LN10 = 2.302585092994046
KELVIN = 273.15
P_O2 = 3  # exponent of the oxygen term of production (PenSim p = 3), kept integer


def fluxes(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Specific rates of the mould (g/g/h, O2 in mmol/g/h) and kLa (1/h)."""
    X = m.fmax(x.X, 0.0)
    S = m.fmax(x.S, 0.0)
    C_L = p.C_L_sat * m.fmax(x.DO, 0.0) / 100.0  # mmol/L
    T_K = x.T + KELVIN
    H = m.exp(-LN10 * p.pH)  # mol/L
    f_pH = 1.0 / (1.0 + p.K_1 / H + H / p.K_2)
    f_S = S / m.fmax(p.K_x * X + S, 1e-12)
    f_O = C_L / m.fmax(p.K_ox * X + C_L, 1e-12)
    base = p.mu_x * f_pH * f_S * f_O
    mu_g = base * p.k_g * m.exp(-p.E_g / (p.R_gas * T_K))
    k_death = base * p.k_d * m.exp(-p.E_d / (p.R_gas * T_K))
    C_L3 = C_L**P_O2
    q_P = p.mu_p * S / (p.K_p + S + S * S / p.K_I) * C_L3 / m.fmax(p.K_op * X + C_L3, 1e-30)
    m_S = p.m_x * S / (p.K_m + S)
    sigma = mu_g / p.Y_xs + q_P / p.Y_ps + m_S
    q_O2 = mu_g / p.Y_xo + q_P / p.Y_po + p.m_o * f_O
    kla = p.alpha_kla * m.sqrt(u.Q_air) * (u.P_w / m.fmax(x.V, 1e-3)) ** p.beta_kla
    return {
        "mu_g": mu_g,
        "k_death": k_death,
        "mu": mu_g - k_death,
        "q_P": q_P,
        "m_S": m_S,
        "sigma": sigma,
        "q_O2": q_O2,
        "kla": kla,
    }


def rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Mass balances of a fed-batch stirred tank, per hour (the feed holds substrate only)."""
    r = fluxes(m, x, u, p)
    D = u.F / x.V
    OUR = r["q_O2"] * x.X  # mmol/L/h
    return {
        "X": (r["mu"] - D) * x.X,
        "S": D * (p.s_f - x.S) - r["sigma"] * x.X,
        "P": r["q_P"] * x.X - (p.K_h + D) * x.P,
        "DO": r["kla"] * (100.0 - x.DO) - 100.0 * OUR / p.C_L_sat - D * x.DO,
        "V": u.F,
        "T": (u.T_set - x.T) / p.tau_T,
    }


def measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """DO probe, temperature, O2 uptake from the DO balance, volume, offline assays."""
    r = fluxes(m, x, u, p)
    return {
        "DO_probe": x.DO,
        "T_probe": x.T,
        "OUR": r["q_O2"] * x.X,
        "V_meas": x.V,
        "X_off": x.X,
        "S_off": x.S,
        "P_off": x.P,
        "P_total": x.P * x.V,  # g of penicillin in the broth
    }


_p = Parameter.of  # positional: name, unit, value, lower, upper, source, description


MODEL = Model(
    name="penicillin_fedbatch",
    description="Penicillin fed-batch (Bajpai-Reuss/PenSim): Contois growth, inhibited production",
    states=(
        State(name="X", unit="g/L", lower=0.0, upper=100.0, nominal=0.1, description="biomass"),
        State(name="S", unit="g/L", lower=0.0, upper=700.0, nominal=15.0, description="substrate"),
        State(name="P", unit="g/L", lower=0.0, upper=50.0, nominal=0.0, description="penicillin"),
        State(
            name="DO",
            unit="%",
            lower=0.0,
            upper=110.0,
            nominal=100.0,
            description="dissolved oxygen, % of C_L_sat",
        ),
        State(name="V", unit="L", lower=10.0, upper=500.0, nominal=100.0, description="volume"),
        State(
            name="T", unit="degC", lower=4.0, upper=50.0, nominal=25.0, description="temperature"
        ),
    ),
    inputs=(
        Input(
            name="F",
            unit="L/h",
            lower=0.0,
            upper=0.5,
            nominal=0.0,
            description="substrate feed rate",
        ),
        Input(
            name="Q_air",
            unit="L/h",
            lower=1.0,
            upper=30.0,
            nominal=8.6,
            description="aeration rate (PenSim f_g)",
        ),
        Input(
            name="P_w",
            unit="W",
            lower=5.0,
            upper=100.0,
            nominal=29.9,
            description="agitator power input",
        ),
        Input(
            name="T_set",
            unit="degC",
            lower=20.0,
            upper=35.0,
            nominal=25.0,
            description="temperature setpoint",
        ),
    ),
    parameters=(
        _p("mu_x", "1/h", 0.092, 0.01, 0.5, PENSIM, "maximum specific growth rate"),
        _p("K_x", "g/g", 0.15, 1e-3, 2.0, PENSIM, "Contois saturation constant"),
        _p("K_ox", "mmol/g", 0.02, 1e-4, 0.5, PENSIM, "Contois oxygen limitation constant"),
        _p("mu_p", "g/g/h", 0.005, 0.0, 0.05, PENSIM, "specific penicillin production capacity"),
        _p("K_p", "g/L", 0.0002, 1e-6, 0.01, PENSIM, "production saturation constant"),
        _p("K_I", "g/L", 0.1, 1e-3, 10.0, PENSIM, "substrate inhibition of production"),
        _p("K_op", "(mmol/L)^3 L/g", 5e-4, 1e-6, 0.1, PENSIM, "oxygen term of production"),
        _p("K_h", "1/h", 0.04, 0.0, 0.2, PENSIM, "penicillin hydrolysis rate constant (K)"),
        _p("Y_xs", "g/g", 0.45, 0.2, 0.7, PENSIM, "biomass yield on substrate"),
        _p("Y_ps", "g/g", 0.9, 0.3, 1.5, PENSIM, "penicillin yield on substrate"),
        _p("m_x", "g/g/h", 0.014, 0.0, 0.1, PENSIM, "maintenance substrate demand"),
        _p("K_m", "g/L", 1e-4, 1e-6, 0.1, LIM, "saturation of maintenance in substrate"),
        _p("Y_xo", "g/mmol", 0.04, 0.005, 0.2, PENSIM, "biomass yield on oxygen"),
        _p("Y_po", "g/mmol", 0.2, 0.01, 1.0, PENSIM, "penicillin yield on oxygen"),
        _p("m_o", "mmol/g/h", 0.467, 0.0, 2.0, PENSIM, "maintenance oxygen demand"),
        _p("k_g", "-", 7.0e3, 1e2, 1e5, PENSIM, "Arrhenius prefactor of growth"),
        _p("E_g", "cal/mol", 5100.0, 1000.0, 20000.0, PENSIM, "activation energy of growth"),
        _p("k_d", "-", 1.0e33, 1e30, 1e36, PENSIM, "Arrhenius prefactor of cell death"),
        _p("E_d", "cal/mol", 50000.0, 30000.0, 70000.0, PENSIM, "activation energy of death"),
        _p("R_gas", "cal/mol/K", 1.987, 1.98, 1.99, CONST, "gas constant"),
        _p("K_1", "mol/L", 1e-10, 1e-12, 1e-8, PENSIM, "pH factor constant K_1"),
        _p("K_2", "mol/L", 7e-5, 1e-6, 1e-3, PENSIM, "pH factor constant K_2"),
        _p("pH", "-", 5.0, 4.0, 7.5, PENSIM + " (controlled pH)", "broth pH"),
        _p("s_f", "g/L", 600.0, 100.0, 800.0, PENSIM, "substrate in the feed"),
        _p(
            "C_L_sat",
            "mmol/L",
            1.16,
            0.1,
            2.0,
            PENSIM + " (C_L*, read as mmol/L)",
            "dissolved O2 at 100 % DO",
        ),
        _p("alpha_kla", "-", 70.0, 10.0, 300.0, PENSIM, "kLa prefactor (PenSim units)"),
        _p("beta_kla", "-", 0.4, 0.2, 0.8, PENSIM, "kLa exponent of power per volume"),
        _p("tau_T", "h", 0.5, 0.01, 5.0, REACTOR, "time constant of the temperature loop"),
    ),
    outputs=(
        Output(name="DO_probe", unit="%", lower=0.0, upper=200.0, description="DO probe"),
        Output(name="T_probe", unit="degC", lower=-5.0, upper=100.0, description="Pt100"),
        Output(
            name="OUR", unit="mmol/L/h", lower=-10.0, upper=1000.0, description="oxygen uptake rate"
        ),
        Output(name="V_meas", unit="L", lower=0.0, upper=1000.0, description="volume"),
        Output(name="X_off", unit="g/L", lower=0.0, upper=200.0, description="offline DCW"),
        Output(name="S_off", unit="g/L", lower=0.0, upper=800.0, description="offline substrate"),
        Output(name="P_off", unit="g/L", lower=0.0, upper=100.0, description="offline penicillin"),
        Output(
            name="P_total",
            unit="g",
            lower=0.0,
            upper=30000.0,
            description="penicillin in the broth (P V)",
            derived=True,
        ),
    ),
    rhs=rhs,
    measure=measure,
    references=(BAJPAI, PENSIM, LIM),
)
