"""S. cerevisiae fed-batch after the bottleneck (limited respiratory capacity) model.

Structure (Sonnleitner and Kaeppeli 1986, Biotechnol. Bioeng. 28:927-937): glucose is taken
up with Monod kinetics, qS = qS_max S / (K_s + S). The respiratory capacity qO_max, lowered at
low dissolved oxygen by a Monod term in K_o, bounds the oxidative glucose flux; the glucose
taken up beyond that critical flux is degraded reductively (fermented) to ethanol, so ethanol
is formed only above the critical rate (short-term Crabtree effect). Ethanol is oxidised only
with the respiratory capacity left over by glucose, and its uptake is repressed by glucose
(K_i). Each route has its own constant biomass yield (oxidative and reductive glucose,
ethanol). No maintenance term, as in the original model. Temperature is fixed at 30 degC.

Balances are closed on purpose, as in ``ecoli_fedbatch``: CO2 is the carbon not found in
biomass or ethanol, and O2 uptake follows from an electron (degree-of-reduction) balance
(Roels 1983, Energetics and Kinetics in Biotechnology). Degrees of reduction per C-mol:
glucose 4, ethanol 6, biomass CH1.8O0.5N0.2 with NH3 as N source 4.2. Fermentation consumes no
oxygen: the reductive ethanol yield is therefore not a free constant but follows from the
electron balance of that route, Y_es = (4 C_s - 4.2 C_x Y_xs_red) / (6 C_e) = 0.480 g/g with the
carbon fractions below, which is the value Sonnleitner and Kaeppeli report (0.48 g/g).

Units: time h, concentrations g/L, DO % air saturation, volume L, O2/CO2 rates mmol/L/h.
"""

from __future__ import annotations

from typing import Any

from models import Input, MathNamespace, Model, Output, Parameter, State, Values

SK = "Sonnleitner and Kaeppeli (1986) Biotechnol. Bioeng. 28:927-937"
STOICH = "elemental composition (stoichiometry)"
ROELS = "Roels (1983) Energetics and Kinetics in Biotechnology, Elsevier"
BENSON = "Benson and Krause (1984) Limnol. Oceanogr. 29:620-632 (fresh water, 30 degC, 1 atm)"
REACTOR = "lab-scale 10 L stirred tank, design value"

# Degrees of reduction per C-mol (Roels 1983).
GAMMA_S, GAMMA_E, GAMMA_X = 4.0, 6.0, 4.2
O2_PER_ELECTRON = 1000.0 / 48.0  # mmol O2 per (g C x electrons per C-mol): 1/(12 g/Cmol * 4)
O2_MOLAR_MASS = 32.0  # mg/mmol


def ethanol_yield(p: Values) -> Any:
    """Ethanol per reductively degraded glucose (g/g) from the route's electron balance."""
    return (GAMMA_S * p.C_s - GAMMA_X * p.C_x * p.Y_xs_red) / (GAMMA_E * p.C_e)


def fluxes(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Specific rates of the cell (g/g/h, O2 in mmol/g/h), shared by rhs and outputs."""
    S = m.fmax(x.S, 0.0)
    E = m.fmax(x.E, 0.0)
    DO = m.fmax(x.DO, 0.0)
    # K_o is given in mg O2/L; the state is % of air saturation
    K_o_pct = 100.0 * p.K_o / (O2_MOLAR_MASS * p.C_O2_sat)
    qO_cap = p.qO_max * DO / (K_o_pct + DO)  # respiratory capacity, mmol O2/g/h
    qS = p.qS_max * S / (p.K_s + S)
    # O2 demand per g of oxidised glucose and ethanol (electron balance, mmol/g)
    o_ox = O2_PER_ELECTRON * (GAMMA_S * p.C_s - GAMMA_X * p.C_x * p.Y_xs_ox)
    o_e = O2_PER_ELECTRON * (GAMMA_E * p.C_e - GAMMA_X * p.C_x * p.Y_xe)
    qS_crit = qO_cap / o_ox
    qS_ox = m.fmin(qS, qS_crit)
    qS_red = qS - qS_ox
    Y_es = ethanol_yield(p)
    p_E = Y_es * qS_red
    # ethanol uptake: kinetic capacity repressed by glucose, bounded by spare respiration
    spare = m.fmax(qO_cap - o_ox * qS_ox, 0.0)
    qE_kin = p.qE_max * E / (p.K_e + E) * p.K_i / (p.K_i + S)
    qE = m.fmin(qE_kin, spare / o_e)
    mu = p.Y_xs_ox * qS_ox + p.Y_xs_red * qS_red + p.Y_xe * qE
    # carbon to CO2 (g C/g/h) and O2 from the electron balance (mmol/g/h)
    q_C = qS * p.C_s + (qE - p_E) * p.C_e - mu * p.C_x
    q_O2 = O2_PER_ELECTRON * (
        GAMMA_S * qS * p.C_s + GAMMA_E * (qE - p_E) * p.C_e - GAMMA_X * mu * p.C_x
    )
    return {
        "qS": qS,
        "qS_crit": qS_crit,
        "qS_ox": qS_ox,
        "qS_red": qS_red,
        "p_E": p_E,
        "qE": qE,
        "qO_cap": qO_cap,
        "mu": mu,
        "q_C": q_C,
        "q_O2": q_O2,
        "Y_es": Y_es,
    }


def rhs(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """Mass balances of a fed-batch stirred tank, per hour (the feed holds glucose only)."""
    r = fluxes(m, x, u, p)
    D = u.F / x.V
    OUR = r["q_O2"] * x.X  # mmol/L/h
    return {
        "X": (r["mu"] - D) * x.X,
        "S": D * (p.S_feed - x.S) - r["qS"] * x.X,
        "E": (r["p_E"] - r["qE"]) * x.X - D * x.E,
        "DO": u.kLa * (100.0 - x.DO) - 100.0 * OUR / p.C_O2_sat - D * x.DO,
        "V": u.F,
    }


def measure(m: MathNamespace, x: Values, u: Values, p: Values) -> dict[str, Any]:
    """DO probe, off-gas rates from the closed balances, volume, offline assays."""
    r = fluxes(m, x, u, p)
    return {
        "DO_probe": x.DO,
        "OUR": r["q_O2"] * x.X,
        "CER": r["q_C"] / 12.0 * 1000.0 * x.X,
        "V_meas": x.V,
        "X_off": x.X,
        "S_off": x.S,
        "E_off": x.E,
        "X_total": x.X * x.V,  # g of biomass in the broth
    }


_p = Parameter.of  # positional: name, unit, value, lower, upper, source, description


MODEL = Model(
    name="yeast_fedbatch",
    description="S. cerevisiae fed-batch: respiratory bottleneck, ethanol overflow and uptake",
    states=(
        State(name="X", unit="g/L", lower=0.0, upper=150.0, nominal=0.5, description="biomass"),
        State(name="S", unit="g/L", lower=0.0, upper=600.0, nominal=5.0, description="glucose"),
        State(name="E", unit="g/L", lower=0.0, upper=50.0, nominal=0.0, description="ethanol"),
        State(
            name="DO",
            unit="%",
            lower=0.0,
            upper=110.0,
            nominal=100.0,
            description="dissolved oxygen, % of air saturation",
        ),
        State(name="V", unit="L", lower=0.5, upper=12.0, nominal=5.0, description="broth volume"),
    ),
    inputs=(
        Input(
            name="F",
            unit="L/h",
            lower=0.0,
            upper=0.5,
            nominal=0.0,
            description="glucose feed rate (pump limit 0.5 L/h)",
        ),
        Input(
            name="kLa",
            unit="1/h",
            lower=0.0,
            upper=1500.0,
            nominal=400.0,
            description="volumetric O2 transfer coefficient (set by aeration and agitation)",
        ),
    ),
    parameters=(
        _p("qS_max", "g/g/h", 3.5, 0.5, 6.0, SK, "glucose uptake capacity"),
        _p("K_s", "g/L", 0.1, 1e-3, 1.0, SK, "glucose affinity"),
        _p("qO_max", "mmol/g/h", 8.0, 2.0, 20.0, SK, "respiratory capacity"),
        _p("K_o", "mg/L", 0.1, 1e-3, 2.0, SK, "DO affinity of respiration (mg O2/L)"),
        _p("qE_max", "g/g/h", 0.238, 0.0, 1.0, SK, "ethanol uptake capacity"),
        _p("K_e", "g/L", 0.1, 1e-3, 2.0, SK, "ethanol affinity"),
        _p("K_i", "g/L", 0.1, 1e-3, 10.0, SK, "glucose repression of ethanol uptake"),
        _p("Y_xs_ox", "g/g", 0.49, 0.3, 0.6, SK, "biomass yield on oxidised glucose"),
        _p("Y_xs_red", "g/g", 0.05, 0.0, 0.15, SK, "biomass yield on fermented glucose"),
        _p("Y_xe", "g/g", 0.72, 0.4, 0.9, SK, "biomass yield on oxidised ethanol"),
        _p("C_s", "gC/g", 0.4, 0.35, 0.45, STOICH, "carbon fraction of glucose C6H12O6"),
        _p("C_e", "gC/g", 0.5214, 0.5, 0.55, STOICH, "carbon fraction of ethanol C2H6O"),
        _p(
            "C_x",
            "gC/g",
            0.463,
            0.40,
            0.52,
            ROELS + ": biomass CH1.8O0.5N0.2 with 5 % ash",
            "carbon fraction of yeast biomass",
        ),
        _p("S_feed", "g/L", 300.0, 20.0, 600.0, REACTOR, "glucose in the feed"),
        _p("C_O2_sat", "mmol/L", 0.236, 0.1, 0.4, BENSON, "O2 concentration at 100 % DO"),
    ),
    outputs=(
        Output(name="DO_probe", unit="%", lower=0.0, upper=200.0, description="DO probe"),
        Output(
            name="OUR", unit="mmol/L/h", lower=-50.0, upper=1000.0, description="oxygen uptake rate"
        ),
        Output(
            name="CER", unit="mmol/L/h", lower=-50.0, upper=1000.0, description="CO2 evolution rate"
        ),
        Output(name="V_meas", unit="L", lower=0.0, upper=20.0, description="volume (load cell)"),
        Output(name="X_off", unit="g/L", lower=0.0, upper=200.0, description="offline DCW"),
        Output(name="S_off", unit="g/L", lower=0.0, upper=800.0, description="offline glucose"),
        Output(name="E_off", unit="g/L", lower=0.0, upper=60.0, description="offline ethanol"),
        Output(
            name="X_total",
            unit="g",
            lower=0.0,
            upper=2000.0,
            description="biomass in the broth (X V)",
            derived=True,
        ),
    ),
    rhs=rhs,
    measure=measure,
    references=(SK, ROELS, BENSON),
)
