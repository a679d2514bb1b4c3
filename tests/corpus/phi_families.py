"""Template families for messages that carry PHI.

Each family is a function ``(Ctx) -> Draft`` with several phrasings and layouts chosen at random;
values are drawn fresh for every message and recorded through ``Ctx`` as they are written.
"""

from __future__ import annotations

import datetime as dt
import email
import html
import re
from collections.abc import Callable, Sequence
from email import policy
from email.message import EmailMessage

from tests.corpus import attachments as att
from tests.corpus import identifiers as ids
from tests.corpus import message, vocab
from tests.corpus.model import (
    CONFIDENTIALITY,
    Attachment,
    Ctx,
    Draft,
    Org,
    Patient,
    Provider,
    Staff,
)

# Alternative phrasings, one is picked per message.
_REFERRAL_REQUEST = (
    "REFERRAL REQUEST",
    "Outgoing Referral",
    "Referral Form",
    "New Referral",
)
_NEW_REFERRAL_FOR_YOU = (
    "new referral for you",
    "sending over a referral",
    "one more referral",
)
_NOTES_TO_FOLLOW = (
    "Notes to follow.",
    "Records faxed this am.",
    "Chart attached.",
)
_LABORATORY_REPORT = (
    "LABORATORY REPORT",
    "Final Result",
    "CRITICAL VALUE NOTIFICATION",
    "Lab Results",
)
_PLACING_THE_FOLLOWING_ACCOUN = (
    "Placing the following accounts with you for collection:",
    "New placements for this week:",
    "Accounts returned by the bureau - please re-verify:",
)
_SHORTNESS_OF_BREATH = (
    "shortness of breath",
    "chest pain",
    "fever",
    "confusion",
    "weakness",
    "abdominal pain",
)
_PRIOR_AUTHORIZATION_REQUEST = (
    "PRIOR AUTHORIZATION REQUEST",
    "Pre-certification request",
    "PA Request",
)
_APPROVED = (
    "APPROVED",
    "DENIED",
    "PENDED for additional information",
)
_WORSE_SINCE_LAST_VISIT = (
    "Worse since last visit.",
    "Stable.",
    "Improving.",
    "Still symptomatic.",
)
_SPIKED_A_FEVER = (
    "spiked a fever",
    "became hypotensive",
    "was agitated",
    "desatted to 86%",
)
_HAS_PROGRESSED = (
    "has progressed",
    "is well controlled",
    "needs closer monitoring",
)
_START = (
    "start",
    "continue",
    "increase",
)
_TEAM = (
    "Team",
    "All",
    "Huddle notes",
)
_BACK_IN = (
    "back in",
    "scheduled for",
    "refusing",
)
_NAUSEA = (
    "nausea",
    "dizziness",
    "a rash",
    "insomnia",
    "fatigue",
)
_NO_ACUTE_FINDINGS = (
    "No acute findings.",
    "Findings consistent with clinical history.",
    "Recommend follow-up imaging in 6 months.",
)
_NEW_PATIENT_REGISTRATION = (
    "New patient registration",
    "Intake form",
    "Demographics update",
    "Patient portal enrollment",
)
_AF_BURDEN_14 = (
    "AF burden 14%",
    "battery at ERI",
    "high impedance lead",
    "sensor signal loss",
)
_PATIENTS_DUE_FOR_FOLLOW_UP_T = (
    "Patients due for follow-up this week:",
    "High-risk list for huddle:",
    "ED visits over the weekend:",
    "Need outreach calls:",
)

# --------------------------------------------------------------------------- small helpers


def he(pt: Patient) -> str:
    return "he" if pt.sex == "M" else "she"


def his(pt: Patient) -> str:
    return "his" if pt.sex == "M" else "her"


def him(pt: Patient) -> str:
    return "him" if pt.sex == "M" else "her"


def greet(c: Ctx, who: Staff | Provider) -> str:
    if isinstance(who, Provider):
        if who.credential in ("MD", "DO"):
            return c.choice(
                [f"Dear Dr. {who.last},", f"Dr. {who.last},", f"Hi Dr. {who.last},", "Dear Doctor,"]
            )
        return c.choice([f"Hi {who.first},", f"Dear {who.first} {who.last},", "Hello,"])
    if who.sex and c.maybe(0.15):
        return f"Dear {'Mr.' if who.sex == 'M' else 'Ms.'} {who.last},"
    return c.choice(
        [
            f"Hi {who.first},",
            f"Hello {who.first},",
            f"{who.first} -",
            "Hi,",
            "Good morning,",
            "Hello team,",
            "Dear colleague,",
        ]
    )


def name_label(c: Ctx) -> str:
    return c.choice(
        [
            "Patient",
            "Patient Name",
            "Name",
            "Pt",
            "Patient name",
            "PATIENT",
            "Client",
            "Member",
            "Resident",
            "Pt name",
        ]
    )


def field(c: Ctx, pt: Patient, kind: str) -> str:
    """One labelled patient field, recorded."""
    if kind == "name":
        return f"{name_label(c)}: {c.pname(pt)}"
    if kind == "dob":
        return c.pdob(pt)
    if kind == "mrn":
        return c.pmrn(pt)
    if kind == "ssn":
        return c.pssn(pt)
    if kind == "mbi":
        return c.pmbi(pt)
    if kind == "member":
        return c.pmember(pt, with_plan=c.maybe())
    if kind == "medicaid":
        return c.pmedicaid(pt)
    if kind == "phone":
        return c.pphone(pt)
    if kind == "email":
        return f"{c.choice(['Email', 'E-mail', 'Email address'])}: {c.pemail(pt)}"
    if kind == "address":
        return f"{c.choice(['Address', 'Home address', 'Addr'])}: {c.paddress(pt, True)}"
    if kind == "account":
        return c.paccount(pt)
    raise ValueError(kind)


def id_block(c: Ctx, pt: Patient, kinds: list[str], shuffle: bool = True) -> str:
    head, rest = kinds[:1], kinds[1:]
    if shuffle:
        rest = c.shuffled(rest)
    parts = [field(c, pt, k) for k in head + rest]
    sep = c.choice(["\n", "\n", "\n", " | ", "; ", "  "])
    return sep.join(parts)


def pick_ids(c: Ctx, must: list[str], optional: list[str], k: tuple[int, int]) -> list[str]:
    n = c.randint(*k)
    return must + c.sample(optional, min(n, len(optional)))


def sender_of(who: Staff | Provider) -> tuple[str, str]:
    if isinstance(who, Provider):
        return (f"{who.first} {who.last}, {who.credential}", who.email)
    return (f"{who.first} {who.last}", who.email)


Recipient = Staff | Provider | tuple[str, str]


def draft(
    c: Ctx,
    subject: str,
    text: str | None,
    frm: Staff | Provider,
    to: Sequence[Recipient],
    **kw: object,
) -> Draft:
    rcpts = [t if isinstance(t, tuple) else sender_of(t) for t in to]
    d = Draft(subject=subject, text=text, sender=sender_of(frm), to=rcpts, **kw)  # type: ignore[arg-type]
    if c.maybe(0.15):
        o = c.org(frm.email.partition("@")[2])
        d.cc.append(sender_of(c.staff(o)))
    return d


def subj_prefix(c: Ctx) -> str:
    return c.choice(["", "", "", "RE: ", "Re: ", "FW: ", "Fwd: ", "[EXTERNAL] ", "Secure: "])


def visit_date(c: Ctx) -> str:
    return c.fdate(c.recent(90))


# --------------------------------------------------------------------------- 1 referral


def referral(c: Ctx) -> Draft:
    pt = c.patient()
    cond = pt.condition
    src, dst = c.org(), c.org()
    ref_by = c.provider(src)
    ref_to = c.provider(dst, cond.clinic)
    coord = c.staff(src, "Referral Coordinator")
    sender: Staff | Provider = c.either(ref_by, coord)
    style = c.randint(0, 3)
    if style == 0:
        code = c.icd(c.choice(cond.codes))
        body = (
            f"{greet(c, ref_to)}\n\n"
            f"I am referring {c.pname(pt, c.choice([0, 3, 4, 8]))} ({c.pdob(pt)}) to your "
            f"{cond.clinic.lower()} clinic for evaluation of {c.dx(cond)} ({code}). "
            f"{he(pt).capitalize()} is currently on {c.cond_med(cond)} and "
            f"{c.med()}. Most recent results: {c.cond_lab(cond)}.\n\n"
            f"{c.pmrn(pt)}\n{c.pmember(pt)}\n\n"
            f"Please contact {c.choice(['the patient', him(pt)])} directly at "
            f"{c.pphone(pt, labelled=False)} to schedule. Records are attached."
            f"\n\n{c.signature(sender, src)}"
        )
    elif style == 1:
        kinds = pick_ids(
            c, ["name", "dob"], ["mrn", "phone", "member", "address", "medicaid"], (1, 3)
        )
        urgency = c.choice(["Routine", "Urgent", "Within 2 weeks", "STAT"])
        body = (
            f"{c.choice(_REFERRAL_REQUEST)}"
            f"\n\n{id_block(c, pt, kinds, shuffle=c.maybe())}\n"
            f"Referring provider: {c.rec('name', ref_by.dr, False)} (NPI "
            f"{c.rec('npi', ref_by.npi, False)})\n"
            f"Referred to: {c.rec('name', ref_to.dr, False)}, {cond.clinic}\n"
            f"Reason for referral: {c.dx(cond)}\n"
            f"Diagnosis code(s): {c.icd(c.choice(cond.codes))}"
            + (f", {c.icd_any()[0]}" if c.maybe(0.4) else "")
            + f"\nUrgency: {urgency}\n"
            f"Current medications: {c.cond_med(cond)}; {c.med()}\n\n"
            f"{c.signature(sender, src, short=c.maybe())}"
        )
    elif style == 2:
        body = (
            f"{greet(c, ref_to)} {c.choice(_NEW_REFERRAL_FOR_YOU)}"
            f" - {c.pname(pt, c.choice([0, 1, 5]))}, {c.pdob(pt, labelled=c.maybe())}, "
            f"{c.dx(cond)}. {c.choice(_NOTES_TO_FOLLOW)}"
            f" pt's cell is {c.pphone(pt, labelled=False)}.\n\nthx\n{sender.first}"
        )
    else:
        body = (
            f"{greet(c, ref_to)}\n\n"
            f"Thank you for seeing {c.ptitled(pt)}, a {pt.age_on(c.date)}-year-old "
            f"{'man' if pt.sex == 'M' else 'woman'} with {c.dx(cond)} who has not responded to "
            f"{c.cond_med(cond)}. {his(pt).capitalize()} {c.cond_lab(cond)} on "
            f"{visit_date(c)} prompted this referral.\n\n"
            f"{id_block(c, pt, ['name', 'dob', c.choice(['mrn', 'member', 'medicaid'])])}\n\n"
            f"{c.signature(sender, src)}"
        )
    subject = subj_prefix(c) + c.pick(
        lambda: f"Referral: {c.rec('name', pt.last)}",
        lambda: f"New referral - {cond.clinic}",
        lambda: f"Referral for {c.rec('name', f'{pt.first} {pt.last}')}",
        lambda: "Referral packet",
        lambda: "Urgent referral - please schedule",
        lambda: f"{cond.clinic} referral",
    )
    d = draft(c, subject, body, sender, [ref_to])
    if c.maybe(0.2):
        paras = [
            f"Patient: {c.pname(pt, 0)}    {c.pdob(pt)}",
            f"Assessment: {c.dx(cond)} ({c.icd(c.choice(cond.codes))}). Plan: continue "
            f"{c.cond_med(cond)}; refer to {cond.clinic}.",
        ]
        d.attachments.append(
            Attachment(
                f"referral_{c.date:%Y%m%d}.pdf",
                att.pdf_bytes("Referral Letter", paras),
                "application",
                "pdf",
            )
        )
    return d


# --------------------------------------------------------------------------- 2 lab result


def _lab_table(c: Ctx, pt: Patient, n: int) -> list[str]:
    labs = [c.cond_lab(pt.condition)] + [c.lab() for _ in range(n - 1)]
    flag = ["H", "HIGH", "A", "(H)", "*", "L"]
    return [f"{lab:<34} {c.choice(flag)}" for lab in labs]


def lab_result(c: Ctx) -> Draft:
    pt = c.patient()
    lab_org, clinic = (
        c.org(c.choice(["lab.test", "hospital.example", "labs.partner.test"])),
        c.org(),
    )
    ordering = c.provider(clinic)
    tech = c.staff(
        lab_org, c.choice(["Lab Client Services", "Medical Technologist", "Lab Supervisor"])
    )
    style = c.randint(0, 3)
    collected = c.fdate(c.recent(14))
    frm: Staff | Provider
    to: list[Recipient]
    if style == 0:
        body = (
            f"{c.choice(_LABORATORY_REPORT)}\n\n"
            f"{id_block(c, pt, pick_ids(c, ['name', 'dob'], ['mrn', 'account', 'phone'], (1, 2)))}"
            "\n"
            f"Collected: {collected}\nOrdering provider: {c.rec('name', ordering.dr, False)}\n\n"
            f"{'TEST / RESULT':<34} FLAG\n"
            + "\n".join(_lab_table(c, pt, c.randint(2, 5)))
            + f"\n\n{c.signature(tech, lab_org)}"
        )
        frm, to = tech, [ordering]
    elif style == 1:
        nurse = c.staff(clinic, "RN Care Manager")
        body = (
            f"{greet(c, ordering)}\n\n{c.pname(pt)}'s labs from {collected} came back: "
            f"{c.cond_lab(pt.condition)}, {c.lab()}"
            + (f" and {c.lab()}" if c.maybe() else "")
            + f". {c.choice(['Please advise on', 'Do you want to adjust', 'Should we hold'])} "
            f"{his(pt)} {c.cond_med(pt.condition)}? {c.pdob(pt)}.\n\n"
            f"{c.signature(nurse, clinic, short=True)}"
        )
        frm, to = nurse, [ordering]
    elif style == 2:
        body = (
            f"Dear {c.ptitled(pt)},\n\n"
            f"Your recent test results are available. Your {c.cond_lab(pt.condition)} is above "
            f"the target range for your {c.dx(pt.condition)}. {c.rec('name', ordering.dr, False)} "
            f"recommends that you continue {c.cond_med(pt.condition)} and schedule a follow-up "
            f"visit.\n\nIf you have questions, please call us at {c.ophone(clinic.phone)}.\n\n"
            f"{c.signature(ordering, clinic, short=True)}"
        )
        frm, to = ordering, [(f"{pt.first} {pt.last}", pt.email)]
    else:
        code = c.icd(c.choice(pt.condition.codes))
        body = (
            f"Result notification - {c.pname(pt, 2)} {c.pmrn(pt)}\n"
            f"Dx: {code}\n"
            + "\n".join(_lab_table(c, pt, c.randint(1, 4)))
            + f"\nReviewed by {c.rec('name', ordering.dr, False)} on {visit_date(c)}."
        )
        frm, to = tech, [ordering]
    subject = subj_prefix(c) + (
        f"Results for {c.rec('name', pt.last.upper())}" if c.maybe(0.2) else c.choice([
            "Lab results", "Your test results are ready", "Critical lab value",
            "Abnormal result - please review", "Lab report", "A1c / BMP results",
        ])
    )  # fmt: skip
    d = draft(c, subject, body, frm, to)
    if c.maybe(0.25):
        table = [["Test / result", "Flag"]] + [
            [c.lab(), c.choice(["H", "L", "A", "HH"])] for _ in range(c.randint(2, 5))
        ]
        d.attachments.append(
            Attachment(
                c.choice(["lab_report.pdf", f"results_{c.date:%m%d%Y}.pdf", "LabReport.pdf"]),
                att.pdf_bytes(
                    "Laboratory Report",
                    [
                        f"{field(c, pt, 'name')}   {c.pdob(pt)}   {c.pmrn(pt)}",
                        f"Collected {collected}",
                    ],
                    table,
                    header=lab_org.name,
                ),
                "application",
                "pdf",
            )
        )
    return d


# --------------------------------------------------------------------------- 3 billing with SSN


def billing_ssn(c: Ctx) -> Draft:
    billing = c.org(c.choice(["billing.example", "clinic.example", "hospital.example"]))
    agency = c.vendor_org()
    frm = c.staff(
        billing,
        c.choice(["Billing Specialist", "Revenue Cycle Analyst", "Patient Financial Services"]),
    )
    to = c.staff(agency, "Account Representative")
    style = c.randint(0, 2)
    amt = f"${c.randint(40, 9800)}.{c.randint(0, 99):02d}"
    if style == 0:
        pt = c.patient(18)
        cpt, desc = c.cpt()
        body = (
            f"{greet(c, to)}\n\nPlease update the guarantor on {c.paccount(pt)}. "
            f"Patient {c.pname(pt)}, {c.pssn(pt)}, {c.pdob(pt)}. Balance {amt} for DOS "
            f"{visit_date(c)}, CPT {cpt} ({desc}).\n\n{c.signature(frm, billing)}"
        )
        subject = c.choice(
            ["Account update", "Guarantor correction", "Balance inquiry", "Billing question"]
        )
    elif style == 1:
        n = c.randint(2, 5)
        rows = []
        for _ in range(n):
            pt = c.patient(18)
            rows.append(
                f"{c.pname(pt, c.choice([1, 2]))}\t{c.pssn(pt, labelled=False)}\t"
                f"{c.pdob(pt, labelled=False)}\t${c.randint(90, 5000)}.00"
            )
        body = (
            f"{greet(c, to)}\n\n{c.choice(_PLACING_THE_FOLLOWING_ACCOUN)}\n\n"
            "Name\tSSN\tDOB\tBalance\n"
            + "\n".join(rows)
            + f"\n\n{c.signature(frm, billing, short=True)}"
        )
        subject = c.choice(["Collection placements", "New placements", "Accounts for review"])
    else:
        pt = c.patient(18)
        code = c.icd(c.choice(pt.condition.codes))
        body = (
            f"{greet(c, to)}\n\nClaim for {c.pname(pt)} was rejected: subscriber SSN "
            f"{c.pssn(pt, labelled=False)} does not match payer records. Member ID on file "
            f"{c.rec('member_id', pt.member)}, primary dx {code}. "
            f"Can you confirm with the patient at {c.pphone(pt, labelled=False)}?\n\n"
            f"{c.signature(frm, billing)}"
        )
        subject = c.choice(["Claim rejection - SSN mismatch", "Rejected claim", "Claim denial"])
    return draft(c, subj_prefix(c) + subject, body, frm, [to])


# --------------------------------------------------------------------------- 4 Medicare eligibility


def medicare_eligibility(c: Ctx) -> Draft:
    pt = c.patient(65)
    clinic = c.org()
    frm = c.staff(
        clinic, c.choice(["Patient Access Representative", "Eligibility Specialist", "Front Desk"])
    )
    to = c.staff(c.org(c.choice(["payer.example", "healthplan.test", "billing.example"])))
    eff = c.fdate(dt.date(c.randint(2008, 2024), c.randint(1, 12), 1))
    style = c.randint(0, 3)
    if style == 0:
        body = (
            f"{greet(c, to)}\n\nCan you verify Medicare coverage for {c.pname(pt)}, "
            f"{c.pmbi(pt)}, {c.pdob(pt)}? {he(pt).capitalize()} is scheduled on "
            f"{c.fdate(c.future())}.\n\n{c.signature(frm, clinic)}"
        )
    elif style == 1:
        body = (
            "ELIGIBILITY RESPONSE (271)\n"
            f"Beneficiary: {c.pname(pt, 2)}\n{c.pmbi(pt)}\n{c.pdob(pt)}\n"
            f"Part A effective: {eff}\nPart B effective: {eff}\n"
            f"Medicare Advantage: {c.choice(['None', pt.plan])}\n"
            f"QMB: {c.choice(['Yes', 'No'])}\nStatus: ACTIVE"
        )
    elif style == 2:
        body = (
            f"{greet(c, to)}\n\nThe new Medicare card for {c.pname(pt, 4)} shows "
            f"{c.pmbi(pt, labelled=False)} (the old HICN is no longer valid). Please update "
            f"{his(pt)} record before we rebill.\n\n{c.signature(frm, clinic, short=True)}"
        )
    else:
        body = (
            f"Medicare Secondary Payer questionnaire completed for {c.pname(pt)}.\n"
            f"{c.pmbi(pt)} | {c.pdob(pt)} | {c.pphone(pt)}\n"
            f"Primary: Medicare; secondary "
            f"{c.pmedicaid(pt) + ' (dual eligible)' if c.maybe(0.4) else c.pmember(pt)}.\n"
            + (f"Reason for visit: {c.dx(pt.condition)}\n" if c.maybe() else "")
            + f"\n{c.signature(frm, clinic, short=True)}"
        )
    subject = subj_prefix(c) + c.choice(
        [
            "Medicare eligibility",
            "Eligibility check",
            "MBI verification",
            "Medicare coverage question",
            "271 response",
            "MSP questionnaire",
        ]
    )
    return draft(c, subject, body, frm, [to])


# --------------------------------------------------------------------------- 5 appointment reminder


def appointment_reminder(c: Ctx) -> Draft:
    pt = c.patient()
    clinic = c.org()
    prov = c.provider(clinic, pt.condition.clinic)
    sched = c.staff(clinic, "Scheduler")
    when = c.future(1, 30)
    at = c.time()
    style = c.randint(0, 3)
    if style == 0:
        body = (
            f"Dear {c.ptitled(pt)},\n\nThis is a reminder of your appointment at the "
            f"{pt.condition.clinic} clinic on {c.fdate(when)} at {at} with "
            f"{c.rec('name', prov.dr, False)} for follow-up of your {c.dx(pt.condition)}. "
            f"Please bring a list of your medications, including {c.cond_med(pt.condition)}.\n\n"
            f"To reschedule call {c.ophone(clinic.phone)}.\n\n{clinic.name}"
        )
    elif style == 1:
        body = (
            f"Reminder: {pt.first}, your {pt.condition.clinic} appt "
            f"({c.dx(pt.condition)} follow-up) is {c.fdate(when, [1, 3, 4])} {at}. "
            f"Reply C to confirm. {c.ophone(clinic.phone)}"
        )
        c.rec("name", pt.first)
    elif style == 2:
        caregiver, _, _ = c.person_name()
        body = (
            f"Hello {caregiver},\n\nAs {c.pname(pt, 0)}'s caregiver on file, we are reminding "
            f"you of {his(pt)} {c.choice(['infusion', 'dialysis', 'therapy', 'follow-up'])} "
            f"appointment on {c.fdate(when)} at {at} ({c.dx(pt.condition)}). "
            f"{c.pdob(pt)}.\n\n{c.signature(sched, clinic)}"
        )
    else:
        body = (
            f"Hi {c.pname(pt, 4)},\n\nYou are scheduled for {_procedure(c, pt)} on {c.fdate(when)} "
            f"at {at}. Because of your {c.dx(pt.condition)}, please "
            f"{c.choice(['hold your', 'continue your', 'bring your'])} {c.cond_med(pt.condition)} "
            f"as discussed. Confirmation #: {c.randint(100000, 999999)}.\n\n"
            f"{c.signature(sched, clinic, short=True)}"
        )
    subject = subj_prefix(c) + c.choice([
        "Appointment reminder", "Your upcoming appointment", "Reminder of your visit",
        f"Appointment on {c.fdate(when, [1, 3, 5])}", f"{pt.condition.clinic} appointment",
    ])  # fmt: skip
    local = pt.email
    d = Draft(
        subject=subject,
        text=body,
        sender=(clinic.name, f"noreply@{clinic.domain}"),
        to=[(f"{pt.first} {pt.last}", local)],
    )
    if c.maybe(0.3):
        start = dt.datetime(
            when.year, when.month, when.day, c.randint(8, 16), c.choice([0, 15, 30, 45])
        )
        ics = att.ics_bytes(
            uid=f"{c.randint(10**9, 10**10)}@{clinic.domain}",
            summary=f"{pt.condition.clinic} visit - {c.rec('name', f'{pt.first} {pt.last}')}",
            description=f"Follow-up for {c.dx(pt.condition)} with {c.rec('name', prov.dr, False)}",
            location=f"{clinic.name}, {clinic.address.city}",
            start=start,
            minutes=c.choice([20, 30, 40, 60]),
            stamp=dt.datetime(c.date.year, c.date.month, c.date.day, 9, 0),
            organizer=f"noreply@{clinic.domain}",
        )
        d.attachments.append(Attachment("invite.ics", ics, "text", "calendar"))
    return d


def _procedure(c: Ctx, pt: Patient) -> str:
    """A procedure name fit for the patient (no mammogram for Mr. X); its code is not shown."""
    skip = ("mammogra", "obstetric", "child") if pt.sex == "M" else ("prostate", "child")
    return c.choice([d for _, d in vocab.CPT if not any(k in d for k in skip)])


# --------------------------------------------------------------------------- 6 discharge summary


def discharge_summary(c: Ctx) -> Draft:
    pt = c.patient(18)
    hosp = c.org(c.choice(["hospital.example", "stmarys.example", "valleyhealth.example"]))
    pcp_org = c.org()
    hospitalist = c.provider(hosp, "Hospital Medicine")
    pcp = c.provider(pcp_org, "Primary Care")
    adm = c.recent(30)
    dis = adm + dt.timedelta(days=c.randint(1, 9))
    cond = pt.condition
    heading = c.choice(
        [
            "DISCHARGE SUMMARY",
            "Transition of Care Summary",
            "Hospital Discharge Notification",
            "Discharge Summary - Final",
        ]
    )
    dxs = [f"{c.dx(cond)} ({c.icd(c.choice(cond.codes))})"]
    for _ in range(c.randint(0, 2)):
        code, desc = c.icd_any()
        dxs.append(f"{desc} ({code})")
    meds = [c.cond_med(cond)] + [c.med() for _ in range(c.randint(1, 4))]
    sections = {
        "ids": id_block(c, pt, pick_ids(c, ["name", "dob"], ["mrn", "account", "member"], (1, 2))),
        "dates": f"Admitted: {c.fdate(adm)}    Discharged: {c.fdate(dis)}",
        "dx": "Diagnoses:\n" + "\n".join(f"  {i + 1}. {x}" for i, x in enumerate(dxs)),
        "course": (
            f"Hospital course: {c.ptitled(pt) if c.maybe(0.3) else c.choice(['Patient', 'Pt'])} "
            "presented with "
            f"{c.choice(_SHORTNESS_OF_BREATH)}"
            f". Labs notable for {c.cond_lab(cond)} and {c.lab()}. Treated and improved."
        ),
        "meds": "Discharge medications:\n" + "\n".join(f"  - {m}" for m in meds),
        "fu": (
            f"Follow-up: {c.rec('name', pcp.dr, False)} within "
            f"{c.choice(['7', '7-10', '14'])} days; repeat labs in 1 week."
        ),
    }
    order = ["ids", "dates", "dx", "course", "meds", "fu"]
    if c.maybe(0.4):
        order = ["ids", "dates", *c.shuffled(order[2:])]
    body = (
        f"{heading}\n\n"
        + "\n\n".join(sections[k] for k in order)
        + f"\n\nAttending: {c.rec('name', hospitalist.dr, False)}\n\n"
        + c.signature(hospitalist, hosp, short=True)
    )
    subject = subj_prefix(c) + c.choice(
        [
            "Discharge summary",
            "Your patient was discharged",
            "TOC: discharge notification",
            "Discharge summary - please review",
            "ADT discharge notice",
        ]
    )
    return draft(c, subject, body, hospitalist, [pcp])


# --------------------------------------------------------------------------- 7 prior authorisation


def prior_auth(c: Ctx) -> Draft:
    pt = c.patient(18)
    clinic = c.org()
    payer = c.org(c.choice(["payer.example", "healthplan.test"]))
    prov = c.provider(clinic, pt.condition.clinic)
    pa = c.staff(clinic, c.choice(["Prior Authorization Specialist", "Clinical Coordinator"]))
    reviewer = c.staff(payer, "Utilization Review Nurse")
    cond = pt.condition
    style = c.randint(0, 2)
    if style == 0:
        requested = c.pick(lambda: c.cond_med(cond), lambda: "CPT {} ({})".format(*c.cpt()))
        body = (
            f"{c.choice(_PRIOR_AUTHORIZATION_REQUEST)}\n\n"
            f"Member: {c.pname(pt)}\n{c.pmember(pt, with_plan=False)}\n{c.pdob(pt)}\n"
            f"Prescriber: {c.rec('name', prov.dr, False)}, NPI {c.rec('npi', prov.npi, False)}\n"
            f"Requested: {requested}\n"
            f"Diagnosis: {c.dx(cond)} - {c.icd(c.choice(cond.codes))}\n"
            f"Clinical rationale: failed {c.med()}; {c.cond_lab(cond)}.\n\n"
            f"{c.signature(pa, clinic)}"
        )
        frm, to = pa, [reviewer]
    elif style == 1:
        body = (
            f"{greet(c, pa)}\n\nAuthorization {c.choice(_APPROVED)}"
            f" for {c.pname(pt, 2)} ({c.pmember(pt, with_plan=False)}). Service: "
            f"{c.cond_med(cond)} for {c.dx(cond)}. Auth #: PA{c.randint(10**7, 10**8)}. "
            f"Valid {c.fdate(c.date)} - {c.fdate(c.future(60, 365))}.\n\n"
            f"{c.signature(reviewer, payer)}"
        )
        frm, to = reviewer, [pa]
    else:
        cpt, desc = c.cpt()
        body = (
            f"{greet(c, reviewer)}\n\nFollowing up on the pending request for {desc} (CPT {cpt}) "
            f"for {c.pname(pt)}, {c.pdob(pt)}. {he(pt).capitalize()} has {c.dx(cond)} "
            f"({c.icd(c.choice(cond.codes))}) with {c.cond_lab(cond)} despite "
            f"{c.cond_med(cond)}. Peer-to-peer with {c.rec('name', prov.dr, False)} is available "
            f"at {c.ophone(clinic.phone)}.\n\n{c.signature(pa, clinic, short=True)}"
        )
        frm, to = pa, [reviewer]
    subject = subj_prefix(c) + c.choice(
        [
            "Prior authorization request",
            "PA status",
            "Pre-cert needed",
            "Authorization determination",
            "Peer to peer request",
            "PA - additional info",
        ]
    )
    return draft(c, subject, body, frm, to)


# --------------------------------------------------------------------------- 8 clinical update
# (a name and clinical content, no structured identifier)


def clinical_update(c: Ctx) -> Draft:
    """Clinical content and a patient name only: structured=False."""
    pt = c.patient()
    clinic = c.org()
    a, b = c.provider(clinic, pt.condition.clinic), c.provider(clinic, pt.condition.clinic)
    nurse = c.staff(clinic, c.choice(["RN Care Manager", "LPN", "Medical Assistant"]))
    cond = pt.condition
    style = c.randint(0, 4)
    frm: Staff | Provider
    to: list[Recipient]
    if style == 0:
        body = (
            f"pt {c.pname(pt, c.choice([0, 5]))} seen today for {c.dx(cond)}. "
            f"{c.choice(_WORSE_SINCE_LAST_VISIT)} "
            f"Started {c.cond_med(cond)}, stopped {c.med(dose=False)}. "
            f"{c.cond_lab(cond)}. f/u 2 wks.\n\n{nurse.first}"
        )
        frm, to = nurse, [a]
    elif style == 1:
        body = (
            f"{greet(c, a)}\n\nQuick handoff on {c.pname(pt)} in room {c.randint(2, 40)}: "
            f"admitted for {c.dx(cond)}, on {c.cond_med(cond)}. Overnight "
            f"{c.choice(_SPIKED_A_FEVER)}."
            f" Morning {c.cond_lab(cond)}. Family aware.\n\n{c.signature(b, clinic, short=True)}"
        )
        frm, to = b, [a]
    elif style == 2:
        body = (
            f"Dear {c.ptitled(pt)},\n\nAs we discussed at your visit, your "
            f"{c.dx(cond)} {c.choice(_HAS_PROGRESSED)}"
            f". Please {c.choice(_START)} {c.cond_med(cond)} and keep a log "
            f"of your symptoms.\n\n{c.signature(a, clinic, short=True)}"
        )
        frm, to = a, [(f"{pt.first} {pt.last}", pt.email)]
    elif style == 3:
        body = (
            f"Re: {c.pname(pt, c.choice([0, 1, 4]))}\n\n"
            f"{c.choice(_TEAM)} - {he(pt)} is {c.choice(_BACK_IN)} "
            f"{c.choice(['dialysis', 'chemo', 'PT', 'wound care', 'the infusion'])}. "
            f"Diagnosis {c.dx(cond)}; {c.cond_lab(cond)}. Psych note mentions "
            f"{c.dx(c.choice(vocab.CONDITIONS))}. Please update care plan.\n\n"
            f"{nurse.first} {nurse.last[0]}."
        )
        frm, to = nurse, [a, b]
    else:
        body = (
            f"{greet(c, nurse)}\n\n{c.pname(pt, 4)} called about side effects from "
            f"{c.cond_med(cond)} ({c.choice(_NAUSEA)}). "
            f"{he(pt).capitalize()} has {c.dx(cond)} and {c.dx(c.choice(vocab.CONDITIONS))}. "
            f"Can you call {him(pt)} back this afternoon?\n\n{c.signature(a, clinic, short=True)}"
        )
        frm, to = a, [nurse]
    subject = subj_prefix(c) + c.pick(
        lambda: c.rec("name", pt.last),
        lambda: f"Re: {c.rec('name', f'{pt.first} {pt.last}')}",
        lambda: c.choice(
            [
                "f/u",
                "Patient update",
                "Handoff",
                "Your visit today",
                "Care team update",
                "callback please",
            ]
        ),
    )
    return draft(c, subject, body, frm, to)


# --------------------------------------------------------------------------- 9 identifier only


def identifier_only(c: Ctx) -> Draft:
    """A strong identifier and nothing clinical: structured=True."""
    org = c.org()
    frm, to = c.staff(org), c.staff(c.org())
    pt = c.patient(18)
    style = c.randint(0, 4)
    if style == 0:
        body = (
            f"{greet(c, to)}\n\nHere is the SSN you asked for: "
            f"{c.pssn(pt, labelled=False)}\n\n{frm.first}"
        )
    elif style == 1:
        body = (
            f"{greet(c, to)}\n\nThe MBI on the new card is {c.pmbi(pt, labelled=False)}. "
            f"Please update the account.\n\n{c.signature(frm, org, short=True)}"
        )
    elif style == 2:
        body = (
            f"{greet(c, to)}\n\nPlease correct the SSN for {c.pname(pt)} to "
            f"{c.pssn(pt, labelled=False)} - the one on file was mistyped.\n\n"
            f"{c.signature(frm, org)}"
        )
    elif style == 3:
        body = (
            f"{c.pname(pt, 1)}\n{c.pssn(pt)}\n{c.pdob(pt)}\n\n"
            f"{c.choice(['per your request', 'as requested', 'for the file'])}"
        )
    else:
        body = (
            f"{greet(c, to)}\n\n{c.pname(pt)}'s {c.pmbi(pt)}. "
            f"{c.choice(['Thanks!', 'Let me know if you need anything else.', ''])}\n\n"
            f"{frm.first}"
        )
    subject = subj_prefix(c) + c.choice(
        [
            "info you requested",
            "correction",
            "as requested",
            "update",
            "new card",
            "ID",
            "Re: your question",
        ]
    )
    return draft(c, subject, body, frm, [to])


# --------------------------------------------------------------------------- 10 subject only


def subject_only(c: Ctx) -> Draft:
    pt = c.patient()
    org = c.org()
    frm, to = c.either(c.staff(org), c.provider(org)), c.staff(org)
    forms = [
        lambda: f"{c.pname(pt, 0)} DOB {c.pdob(pt, labelled=False)} MRN {c.pmrn(pt, False)}",
        lambda: f"Pt {c.pname(pt, 1)} - {c.pdob(pt, labelled=False)}",
        lambda: f"Re: {c.pname(pt, 0)} ({c.pmrn(pt, False)})",
        lambda: f"{c.pname(pt, 0)} - {c.dx(pt.condition)} f/u",
        lambda: f"{c.pname(pt, 2)} {c.pdob(pt)}",
        lambda: (
            f"call back {c.pname(pt, 0)} {c.pphone(pt, labelled=False)} re {c.dx(pt.condition)}"
        ),
        lambda: f"MBI {c.pmbi(pt, labelled=False)} - {c.pname(pt, 0)} eligibility",
        lambda: f"{c.pname(pt, 5)} / {c.cond_med(pt.condition)} refill",
    ]
    subject = subj_prefix(c) + c.choice(forms)()
    body = c.choice([
        "Please call me when you get a chance.", "See the chart for details.",
        "Can you take a look? Thanks", "Done - closing the loop.", "FYI",
        "Left a message, will try again tomorrow.", "Please review and sign.",
        "Can we discuss at huddle?", "Thanks for your help with this one.",
    ])  # fmt: skip
    if c.maybe(0.6):
        body += "\n\n" + c.signature(frm, org, short=c.maybe())
    return draft(c, subject, body, frm, [to])


# --------------------------------------------------------------------------- 11 forwarded thread

_INNER: list[Callable[[Ctx], Draft]] = []  # filled below the families


def _patient_message(c: Ctx) -> Draft:
    pt = c.patient(18)
    clinic = c.org()
    front = c.staff(clinic, "Front Desk")
    body = (
        f"Hi, this is {c.pname(pt, c.choice([0, 8]))}, my {c.pdob(pt)}. I've been having "
        f"{c.choice(['bad headaches', 'swelling in my legs', 'trouble sleeping', 'stomach pain'])}"
        f" since starting {c.med()}. I also have {c.dx(pt.condition)}. Could the doctor call me at "
        f"{c.pphone(pt, labelled=False)}?\n\nThank you\n{pt.first}"
    )
    return Draft(
        subject=c.choice(
            ["question about my medication", "side effects", "need a call back", "Help"]
        ),
        text=body,
        sender=(f"{pt.first} {pt.last}", pt.email),
        to=[(front.first + " " + front.last, front.email)],
    )


def _safe_filename(text: str) -> str:
    return re.sub(r'[\\/:*?"<>|]+', "", text)[:40].strip() or "message"


def forwarded_thread(c: Ctx) -> Draft:
    inner_fn = c.choice(_INNER)
    inner = inner_fn(c)
    assert inner.text is not None and inner.sender is not None
    org = c.org()
    frm, to = c.staff(org), c.either(c.staff(org), c.provider(org))
    top = c.choice([
        "FYI - see below.", "Can you handle this?", "Forwarding for your records.",
        "Please call this patient back.", "See below, not sure who owns this.",
        "Adding you to this thread.", "Looping in the care team.", "Please review.",
    ])  # fmt: skip
    sent = c.date - dt.timedelta(days=c.randint(0, 5))
    style = c.randint(0, 3)
    in_from = f"{inner.sender[0]} <{inner.sender[1]}>"
    in_to = ", ".join(f"{n} <{a}>" for n, a in inner.to)
    if style == 0:
        quoted = (
            f"-----Original Message-----\nFrom: {in_from}\nSent: {sent:%A, %B} {sent.day}, "
            f"{sent.year} {c.time()}\nTo: {in_to}\nSubject: {inner.subject}\n\n{inner.text}"
        )
        body = f"{top}\n\n{c.signature(frm, org, short=True)}\n\n{quoted}"
    elif style == 1:
        lines = inner.text.split("\n")
        quoted = "\n".join("> " + ln if ln else ">" for ln in lines)
        body = f"{top}\n\nOn {ids.fmt_date(sent, 4)}, at {c.time()}, {in_from} wrote:\n{quoted}"
    elif style == 2:
        quoted = (
            f"---------- Forwarded message ---------\nFrom: {in_from}\n"
            f"Date: {sent:%a, %b} {sent.day}, {sent.year}\nSubject: {inner.subject}\nTo: {in_to}"
            f"\n\n{inner.text}"
        )
        body = f"{top}\n\n{quoted}"
    else:
        # forwarded as an attachment (message/rfc822)
        raw = message.build(inner, c.rng, sent)
        inner_msg = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(inner_msg, EmailMessage)
        d = draft(
            c, "FW: " + inner.subject, f"{top}\n\n{c.signature(frm, org, short=True)}", frm, [to]
        )
        d.attachments.append(
            Attachment(f"{_safe_filename(inner.subject)}.eml", inner_msg, "message", "rfc822")
        )
        return d
    subject = c.choice(["FW: ", "Fwd: ", "RE: ", "FW: RE: "]) + inner.subject
    d = draft(c, subject, body, frm, [to], reply=style == 1)
    d.attachments.extend(inner.attachments)  # forwarding keeps the original's attachments
    return d


# --------------------------------------------------------------------------- 12 HTML table


_TD_ATTRS = ("", ' style="padding:4px;border:1px solid #ccc"', ' class="val"')


def _td(c: Ctx, v: str) -> str:
    return f"<td{c.choice(_TD_ATTRS)}>{html.escape(v)}</td>"


def html_table(c: Ctx) -> Draft:
    org = c.org()
    frm, to = c.staff(org), c.either(c.staff(c.org()), c.provider(c.org()))
    style = c.randint(0, 1)
    if style == 0:
        pt = c.patient()
        rows: list[tuple[str, str]] = [
            (c.choice(["Patient Name", "Patient", "Name"]), c.pname(pt)),
            (c.choice(["DOB", "Date of Birth", "D.O.B."]), c.pdob(pt, labelled=False)),
        ]
        extra = c.sample(
            ["mrn", "phone", "member", "address", "dx", "icd", "med", "lab", "ssn"], c.randint(2, 5)
        )
        for k in extra:
            if k == "mrn":
                rows.append((c.choice(["MRN", "Med Rec #", "Patient ID"]), c.pmrn(pt, False)))
            elif k == "phone":
                rows.append(("Phone", c.pphone(pt, labelled=False)))
            elif k == "member":
                rows.append(("Member ID", c.rec("member_id", pt.member)))
            elif k == "address":
                rows.append(("Address", c.paddress(pt, True)))
            elif k == "dx":
                rows.append(("Diagnosis", c.dx(pt.condition)))
            elif k == "icd":
                rows.append(("ICD-10", c.icd(c.choice(pt.condition.codes))))
            elif k == "med":
                rows.append(("Medication", c.cond_med(pt.condition)))
            elif k == "lab":
                rows.append(("Latest result", c.cond_lab(pt.condition)))
            else:
                rows.append(("SSN", c.pssn(pt, labelled=False)))
        lab_style = c.choice(["<th align=left>", "<td><b>", '<td class="label">'])
        close = {"<th align=left>": "</th>", "<td><b>": "</b></td>"}.get(lab_style, "</td>")
        trs = "\n".join(f"<tr>{lab_style}{html.escape(k)}{close}{_td(c, v)}</tr>" for k, v in rows)
        table = f'<table border="{c.choice([0, 1])}" cellpadding="3">\n{trs}\n</table>'
        intro = c.choice(
            [
                "Please see the patient details below.",
                "Summary for your review:",
                "Registration details:",
                "Information requested:",
            ]
        )
    else:
        cols = c.sample(["name", "dob", "mrn", "dx", "phone", "lab"], c.randint(3, 5))
        if "name" not in cols:
            cols[0] = "name"
        heads = {
            "name": "Patient",
            "dob": "DOB",
            "mrn": "MRN",
            "dx": "Diagnosis",
            "phone": "Phone",
            "lab": "Last result",
        }
        body_rows = []
        for _ in range(c.randint(2, 8)):
            pt = c.patient()
            vals = {
                "name": lambda pt=pt: c.pname(pt, c.choice([0, 1])),
                "dob": lambda pt=pt: c.pdob(pt, labelled=False),
                "mrn": lambda pt=pt: c.pmrn(pt, False),
                "dx": lambda pt=pt: c.dx(pt.condition),
                "phone": lambda pt=pt: c.pphone(pt, labelled=False),
                "lab": lambda pt=pt: c.cond_lab(pt.condition),
            }
            body_rows.append("<tr>" + "".join(_td(c, vals[k]()) for k in cols) + "</tr>")
        head = "<tr>" + "".join(f"<th>{heads[k]}</th>" for k in cols) + "</tr>"
        table = (
            f'<table style="border-collapse:collapse" border="1">\n{head}\n'
            + "\n".join(body_rows)
            + "\n</table>"
        )
        intro = c.choice(
            [
                "Tomorrow's schedule:",
                "Patients needing outreach this week:",
                "Open care gaps:",
                "No-shows from yesterday:",
            ]
        )
    html_doc = (
        f"<html><body><p>{greet(c, to)}</p><p>{intro}</p>\n{table}\n"
        f"<p>{html.escape(c.signature(frm, org, short=True)).replace(chr(10), '<br>')}</p>"
        "</body></html>"
    )
    subject = subj_prefix(c) + c.choice(
        [
            "Patient info",
            "Schedule",
            "Outreach list",
            "Details as requested",
            "Care gaps",
            "Registration",
        ]
    )
    return draft(c, subject, None, frm, [to], html=html_doc, body_mode="html")


# --------------------------------------------------------------------------- attachments


def _patient_filename(c: Ctx, pt: Patient, ext: str) -> str | None:
    """Sometimes the file is named after the patient (scanners look at file names too)."""
    if not c.maybe(0.15):
        return None
    stem = c.rec(
        "name",
        c.choice([f"{pt.last}_{pt.first}", f"{pt.last}, {pt.first}", f"{pt.first} {pt.last}"]),
    )
    return f"{stem} {c.choice(['records', 'letter', 'labs', 'notes'])}.{ext}"


def _innocuous_body(c: Ctx, frm: Staff | Provider, org: Org, to: Staff | Provider) -> str:
    line = c.choice([
        "Please see attached.", "Attached as requested.", "Here is the file we discussed.",
        "See attached export.", "Attached is the list for tomorrow.",
        "Sending the document over for your review.", "Updated version attached.",
        "Let me know if you have trouble opening the attachment.",
    ])  # fmt: skip
    return f"{greet(c, to)}\n\n{line}\n\n{c.signature(frm, org, short=c.maybe())}"


def _patient_rows(c: Ctx, n: int) -> tuple[list[str], list[list[str]]]:
    cols = c.sample(
        [
            "dob",
            "mrn",
            "phone",
            "dx",
            "icd",
            "med",
            "lab",
            "address",
            "zip",
            "member",
            "ssn",
            "email",
        ],
        c.randint(2, 5),
    )
    style = c.choice([0, 2, 3, 7])
    heads = {
        "dob": c.choice(["DOB", "Date of Birth", "BirthDate"]),
        "mrn": c.choice(["MRN", "PatientID", "Chart"]),
        "phone": "Phone",
        "dx": "Diagnosis",
        "icd": c.choice(["ICD10", "Dx Code"]),
        "med": "Medication",
        "lab": "Last Lab",
        "address": "Street",
        "zip": "Zip",
        "member": "Member ID",
        "ssn": "SSN",
        "email": "Email",
    }
    split = c.maybe(0.4)
    header = ["Last", "First"] if split else [c.choice(["Patient", "Name", "PatientName"])]
    header += [heads[k] for k in cols]
    rows = []
    for _ in range(n):
        pt = c.patient()
        row = (
            [c.rec("name", pt.last), c.rec("name", pt.first)]
            if split
            else [c.pname(pt, c.choice([0, 1, style]))]
        )
        for k in cols:
            row.append(
                {
                    "dob": lambda pt=pt: c.rec("dob", ids.fmt_date(pt.dob, style)),
                    "mrn": lambda pt=pt: c.pmrn(pt, False),
                    "phone": lambda pt=pt: c.pphone(pt, labelled=False),
                    "dx": lambda pt=pt: c.dx(pt.condition),
                    "icd": lambda pt=pt: c.icd(c.choice(pt.condition.codes)),
                    "med": lambda pt=pt: c.cond_med(pt.condition),
                    "lab": lambda pt=pt: c.cond_lab(pt.condition),
                    "address": lambda pt=pt: c.rec("address", pt.address.street),
                    "zip": lambda pt=pt: c.rec("zip", pt.address.zip),
                    "member": lambda pt=pt: c.rec("member_id", pt.member),
                    "ssn": lambda pt=pt: c.pssn(pt, labelled=False),
                    "email": lambda pt=pt: c.pemail(pt),
                }[k]()
            )
        rows.append(row)
    return header, rows


def csv_attachment(c: Ctx) -> Draft:
    org = c.org()
    frm, to = c.staff(org), c.staff(c.org())
    header, rows = _patient_rows(c, c.randint(3, 30))
    delim = c.choice([",", ",", ",", "\t", "|"])
    data = att.csv_bytes([header, *rows], delimiter=delim, bom=c.maybe(0.2))
    name = c.choice(
        [
            "patients_export",
            "recall_list",
            f"schedule_{c.date:%Y-%m-%d}",
            "worklist",
            "census",
            "outreach",
            "report",
        ]
    )
    ext, sub = ("txt", "plain") if delim != "," and c.maybe() else ("csv", "csv")
    d = draft(
        c,
        subj_prefix(c) + c.choice(["Export", "List", "File", "Report", "Worklist"]),
        _innocuous_body(c, frm, org, to),
        frm,
        [to],
    )
    d.attachments.append(Attachment(f"{name}.{ext}", data, "text", sub))
    return d


def zip_attachment(c: Ctx) -> Draft:
    org = c.org()
    frm, to = c.staff(org), c.staff(c.org())
    header, rows = _patient_rows(c, c.randint(3, 25))
    files = [
        (
            c.choice(["export.csv", "patients.csv", "data/claims.csv", "extract.csv"]),
            att.csv_bytes([header, *rows]),
        )
    ]
    if c.maybe(0.4):
        files.append(("README.txt", b"Generated by the reporting job. Columns as labelled.\r\n"))
    d = draft(
        c,
        subj_prefix(c) + c.choice(["Monthly extract", "Files", "Data pull", "Quarterly export"]),
        _innocuous_body(c, frm, org, to),
        frm,
        [to],
    )
    d.attachments.append(
        Attachment(
            c.choice(["export.zip", f"extract_{c.date:%Y%m}.zip", "files.zip"]),
            att.zip_bytes(files),
            "application",
            "zip",
        )
    )
    return d


def _doc_content(
    c: Ctx, pt: Patient, prov: Provider
) -> tuple[str, list[str], list[list[str]] | None]:
    cond = pt.condition
    kind = c.randint(0, 3)
    if kind == 0:
        return (
            "Letter of Medical Necessity",
            [
                "To whom it may concern:",
                f"{c.pname(pt, 0)} ({c.pdob(pt)}) is under my care for {c.dx(cond)} "
                f"({c.icd(c.choice(cond.codes))}). {he(pt).capitalize()} requires "
                f"{c.cond_med(cond)}; alternatives including {c.med()} were not tolerated.",
                f"{c.pmember(pt)}",
                f"Sincerely, {c.rec('name', prov.dr, False)}, NPI {c.rec('npi', prov.npi, False)}",
            ],
            None,
        )
    if kind == 1:
        return (
            "Visit Note",
            [
                f"{field(c, pt, 'name')}    {c.pdob(pt)}    {c.pmrn(pt)}",
                f"Date of service: {visit_date(c)}",
                f"Assessment: {c.dx(cond)}. {c.cond_lab(cond)}.",
                f"Plan: {c.cond_med(cond)}; return in {c.randint(2, 12)} weeks.",
            ],
            None,
        )
    if kind == 2:
        return (
            "Work Excuse",
            [
                f"Please excuse {c.pname(pt, 4)} from work from {visit_date(c)} through "
                f"{c.fdate(c.future(3, 14))} due to {c.dx(cond)}.",
                f"{c.rec('name', prov.dr, False)}",
            ],
            None,
        )
    table = [
        ["Field", "Value"],
        ["Patient", c.pname(pt)],
        ["DOB", c.pdob(pt, False)],
        ["Problem", c.dx(cond)],
        ["Medication", c.cond_med(cond)],
    ]
    return ("Care Plan", [f"Care plan prepared {visit_date(c)}."], table)


def docx_attachment(c: Ctx) -> Draft:
    org = c.org()
    prov = c.provider(org)
    frm, to = c.staff(org), c.staff(c.org())
    pt = c.patient()
    title, paras, table = _doc_content(c, pt, prov)
    d = draft(
        c,
        subj_prefix(c) + c.choice(["Letter", "Document", "Note for signature", "Paperwork"]),
        _innocuous_body(c, frm, org, to),
        frm,
        [to],
    )
    d.attachments.append(
        Attachment(
            _patient_filename(c, pt, "docx")
            or c.choice(
                ["letter.docx", "note.docx", f"{title.replace(' ', '_')}.docx", "Document1.docx"]
            ),
            att.docx_bytes(title, paras, table, author=f"{frm.first} {frm.last}"),
            "application",
            "vnd.openxmlformats-officedocument.wordprocessingml.document",
        )
    )
    return d


def pdf_attachment(c: Ctx) -> Draft:
    org = c.org()
    prov = c.provider(org)
    frm, to = c.staff(org), c.either(c.staff(c.org()), c.provider(c.org()))
    pt = c.patient()
    kind = c.randint(0, 2)
    if kind == 0:
        cpt, desc = c.cpt()
        title = c.choice(["Radiology Report", "Imaging Report"])
        paras = [
            f"{field(c, pt, 'name')}   {c.pdob(pt)}   {c.pmrn(pt)}",
            f"Exam: {desc} (CPT {cpt})",
            f"History: {c.dx(pt.condition)}",
            f"Impression: {c.choice(_NO_ACUTE_FINDINGS)}",
        ]
        table = None
    elif kind == 1:
        cpt, desc = c.cpt()
        title = "Claim Detail"
        paras = [f"Billing provider NPI {c.rec('npi', prov.npi, False)}"]
        table = [
            ["Field", "Value"],
            ["Patient", c.pname(pt, 2)],
            ["DOB", c.pdob(pt, False)],
            ["Insured ID", c.rec("member_id", pt.member)],
            ["Address", c.paddress(pt, True)],
            ["Dx", c.icd(c.choice(pt.condition.codes))],
            ["CPT", f"{cpt}"],
            ["Charge", f"${c.randint(80, 4000)}.00"],
        ]
    else:
        title, paras, table = _doc_content(c, pt, prov)
    d = draft(
        c,
        subj_prefix(c) + c.choice(["Report", "Scan", "Records", "Claim copy", "Document"]),
        _innocuous_body(c, frm, org, to),
        frm,
        [to],
    )
    d.attachments.append(
        Attachment(
            _patient_filename(c, pt, "pdf")
            or c.choice(
                [
                    "scan.pdf",
                    f"scan_{c.date:%Y%m%d}.pdf",
                    "report.pdf",
                    "records.pdf",
                    f"{title.replace(' ', '')}.pdf",
                ]
            ),
            att.pdf_bytes(title, paras, table, header=org.name),
            "application",
            "pdf",
        )
    )
    return d


def xlsx_attachment(c: Ctx) -> Draft:
    org = c.org()
    frm, to = c.staff(org), c.staff(c.org())
    kind = c.randint(0, 1)
    if kind == 0:
        header, rows = _patient_rows(c, c.randint(3, 30))
        table: list[list[object]] = [[*header]]
        table.extend([*r] for r in rows)
        sheets: list[tuple[str, list[list[object]]]] = [
            (c.choice(["Sheet1", "Patients", "Outreach", "Census"]), table)
        ]
    else:
        rows2: list[list[object]] = [["Account", "Patient", "DOS", "CPT", "Balance"]]
        for _ in range(c.randint(3, 20)):
            pt = c.patient()
            rows2.append(
                [
                    c.rec("account", pt.account),
                    c.pname(pt, 1),
                    visit_date(c),
                    c.cpt()[0],
                    round(c.rng.uniform(20, 4000), 2),
                ]
            )
        sheets = [("AR aging", rows2)]
    if c.maybe(0.3):
        sheets.append(("Notes", [["Prepared by", f"{frm.first} {frm.last}"]]))
    d = draft(
        c,
        subj_prefix(c) + c.choice(["Spreadsheet", "AR report", "Tracking sheet", "Updated list"]),
        _innocuous_body(c, frm, org, to),
        frm,
        [to],
    )
    d.attachments.append(
        Attachment(
            c.choice(["report.xlsx", "tracking.xlsx", f"list_{c.date:%m%d}.xlsx", "Book1.xlsx"]),
            att.xlsx_bytes(sheets, author=f"{frm.first} {frm.last}"),
            "application",
            "vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        )
    )
    return d


# --------------------------------------------------------------------------- payments


def patient_payment(c: Ctx) -> Draft:
    pt = c.patient(18)
    org = c.org(c.choice(["billing.example", "clinic.example"]))
    frm, to = c.staff(org, "Billing Specialist"), c.staff(org, "Patient Financial Services")
    amt = f"${c.randint(25, 2500)}.{c.randint(0, 99):02d}"
    if c.maybe(0.55):
        brand, card = ids.credit_card(c.rng)
        exp = f"{c.randint(1, 12):02d}/{c.randint(26, 31)}"
        body = (
            f"{greet(c, to)}\n\n{c.pname(pt)} called to pay {amt} on {c.paccount(pt)}. "
            f"{brand} {c.rec('credit_card', ids.fmt_card(card, c.randint(0, 2)))} exp {exp}, "
            f"CVV {c.randint(100, 999)}. Billing zip {c.rec('zip', pt.address.zip)}. "
            f"Please post today.\n\n{c.signature(frm, org, short=True)}"
        )
        subject = c.choice(["Payment over the phone", "Card payment to post", "Payment"])
    else:
        routing = c.rec("routing", ids.aba(c.rng))
        acct = c.rec("account", ids.bank_account(c.rng))
        body = (
            f"{greet(c, to)}\n\nRefund of {amt} approved for {c.pname(pt)} ({c.pdob(pt)}), "
            f"overpayment on DOS {visit_date(c)}. ACH details: routing {routing}, account "
            f"{acct} ({c.choice(['checking', 'savings'])}).\n\n{c.signature(frm, org)}"
        )
        subject = c.choice(["Patient refund", "Refund request - ACH", "Overpayment refund"])
    return draft(c, subj_prefix(c) + subject, body, frm, [to])


# --------------------------------------------------------------------------- registration


def patient_registration(c: Ctx) -> Draft:
    pt = c.patient(18)
    org = c.org()
    frm, to = c.staff(org, "Patient Access Representative"), c.staff(org)
    ec_first, ec_last, _ = c.person_name()
    lines = [
        f"{c.choice(_NEW_PATIENT_REGISTRATION)}",
        "",
        f"Name: {c.pname(pt, c.choice([0, 1, 8]))}",
        c.pdob(pt),
        f"Address: {c.paddress(pt)}",
        c.pphone(pt),
        f"Email: {c.pemail(pt)}",
    ]
    opt = c.sample(["dl", "passport", "member", "medicaid", "ssn", "ec", "pcp"], c.randint(2, 4))
    for k in opt:
        if k == "dl":
            lines.append(c.pdl(pt))
        elif k == "passport":
            lines.append(c.ppassport(pt))
        elif k == "member":
            lines.append(f"Insurance: {c.pmember(pt)}")
        elif k == "medicaid":
            lines.append(c.pmedicaid(pt))
        elif k == "ssn":
            lines.append(c.pssn(pt))
        elif k == "ec":
            lines.append(
                f"Emergency contact: {c.rec('name', f'{ec_first} {ec_last}')} "
                f"({c.choice(['spouse', 'daughter', 'son', 'mother', 'friend'])}) "
                f"{c.rec('phone', ids.fmt_phone(ids.phone_digits(c.rng), 1))}"
            )
        else:
            lines.append(f"Reason for visit: {c.dx(pt.condition)}")
    if c.maybe(0.35):
        lines.append(
            f"Fax (home office): {c.rec('fax', ids.fmt_phone(ids.phone_digits(c.rng), 0))}"
        )
    body = "\n".join(lines) + f"\n\n{c.signature(frm, org, short=True)}"
    return draft(
        c,
        subj_prefix(c) + c.choice(["New patient", "Registration", "Intake", "Demographics update"]),
        body,
        frm,
        [to],
    )


# --------------------------------------------------------------------------- devices, portal


def device_implant(c: Ctx) -> Draft:
    pt = c.patient(30)
    org = c.org()
    kind, model = c.choice(vocab.IMPLANT_DEVICES)
    prov = c.provider(org, c.choice(["Cardiology", "Electrophysiology", "Endocrinology"]))
    rep = c.staff(c.vendor_org(), "Clinical Specialist")
    sn = c.rec("device_serial", ids.device_serial(c.rng))
    if c.maybe():
        body = (
            f"{greet(c, prov)}\n\nDevice registration confirmation: {kind} {model}, serial "
            f"{sn}, implanted in {c.pname(pt)} ({c.pdob(pt)}) on {visit_date(c)}. "
            f"Indication: {c.dx(pt.condition)}.\n\n{c.signature(rep, c.vendor_org())}"
        )
        frm: Staff | Provider = rep
        to: list[Staff | Provider] = [prov]
    else:
        body = (
            f"Remote monitoring alert\n\nPatient: {c.pname(pt, 2)}\nDevice: {model} SN {sn}\n"
            f"Event: {c.choice(_AF_BURDEN_14)}"
            f"\nTransmission received {visit_date(c)} {c.time()}\n"
            f"{c.pphone(pt)}"
        )
        frm, to = c.staff(org, "Device Clinic RN"), [prov]
    return draft(
        c,
        subj_prefix(c)
        + c.choice(
            ["Device registration", "Remote monitoring alert", "Implant record", "Device clinic"]
        ),
        body,
        frm,
        to,
    )


def portal_audit(c: Ctx) -> Draft:
    pt = c.patient(18)
    org = c.org()
    sec = c.staff(org, c.choice(["Privacy Officer", "IT Security Analyst", "HIM Specialist"]))
    to = c.staff(org)
    ip = c.rec("ip", ids.public_ip(c.rng) if c.maybe(0.85) else ids.ipv6(c.rng))
    token = "".join(c.choice("abcdef0123456789") for _ in range(16))
    url = c.rec("url", f"https://portal.{org.domain}/mychart/patient/{token}/results")
    body = c.pick(
        lambda: (
            f"Security alert: the patient portal account for {c.pname(pt)} ({c.pemail(pt)}) "
            f"was accessed from IP {ip} at {c.time()} after {c.randint(3, 9)} failed logins. "
            f"Record viewed: {url}\nPlease review and reset credentials."
        ),
        lambda: (
            f"Privacy investigation #{c.randint(1000, 9999)}: record {url} for "
            f"{c.pname(pt, 2)} was opened from {ip}, outside the care team. Patient contact: "
            f"{c.pemail(pt)}."
        ),
    )
    body += f"\n\n{c.signature(sec, org, short=True)}"
    return draft(
        c,
        subj_prefix(c)
        + c.choice(["Portal security alert", "Privacy review", "Access investigation"]),
        body,
        sec,
        [to],
    )


def injury_claim(c: Ctx) -> Draft:
    pt = c.patient(18)
    insurer = c.vendor_org()
    clinic = c.org()
    adjuster = c.staff(insurer, "Claims Adjuster")
    to = c.staff(clinic, "Billing Specialist")
    v = c.rec("vin", ids.vin(c.rng))
    code, desc = c.choice([x for x in vocab.ICD10 if x[0][0] in "SV"])
    body = (
        f"{greet(c, to)}\n\nRe: claim {ids.claim_number(c.rng)}, insured vehicle VIN {v}.\n"
        f"Claimant {c.pname(pt)}, {c.pdob(pt)}, was treated at your facility on "
        f"{visit_date(c)} for {c.rec('diagnosis', desc)} ({c.icd(code)}). Please send itemized "
        f"bills and records for this date of service.\n\n{c.signature(adjuster, insurer)}"
    )
    return draft(
        c,
        subj_prefix(c) + c.choice(["Auto claim records request", "PIP claim", "Records request"]),
        body,
        adjuster,
        [to],
    )


def rx_refill(c: Ctx) -> Draft:
    pt = c.patient()
    pharm = c.org(c.choice(["pharmacy.example", "example.com"]))
    clinic = c.org()
    prov = c.provider(clinic)
    tech = c.staff(pharm, "Pharmacy Technician")
    body = (
        f"{c.choice(['REFILL REQUEST', 'Renewal request', 'Rx refill authorization'])}\n\n"
        f"Patient: {c.pname(pt)}\n{c.pdob(pt)}\n"
        + (f"{c.pphone(pt)}\n" if c.maybe() else "")
        + f"Medication: {c.cond_med(pt.condition)}, #{c.choice([30, 60, 90])}, refills: "
        f"{c.randint(0, 5)}\nPrescriber: {c.rec('name', prov.dr, False)} "
        f"DEA {c.rec('dea', prov.dea, False)} NPI {c.rec('npi', prov.npi, False)}\n"
        f"Last fill: {visit_date(c)}\n\n{c.signature(tech, pharm)}"
    )
    return draft(
        c,
        subj_prefix(c) + c.choice(["Refill request", "Rx renewal", "Refill auth"]),
        body,
        tech,
        [prov],
    )


def care_coordination(c: Ctx) -> Draft:
    org = c.org()
    frm = c.staff(org, "RN Care Manager")
    prov = c.provider(org)
    to: list[Recipient] = [prov, c.staff(org)]
    items = []
    for i in range(c.randint(2, 6)):
        pt = c.patient()
        bits = [c.pname(pt, c.choice([0, 1]))]
        if c.maybe(0.6):
            bits.append(f"({c.pdob(pt, labelled=False)})")
        bits.append(f"- {c.dx(pt.condition)}")
        if c.maybe():
            bits.append(f", last {c.cond_lab(pt.condition)}")
        items.append(f"{i + 1}. " + " ".join(bits))
    body = (
        f"{greet(c, prov)}\n\n{c.choice(_PATIENTS_DUE_FOR_FOLLOW_UP_T)}"
        f"\n\n" + "\n".join(items) + f"\n\n{c.signature(frm, org, short=True)}"
    )
    return draft(
        c,
        subj_prefix(c)
        + c.choice(["Huddle list", "Follow-up list", "Outreach", "Weekend ED visits"]),
        body,
        frm,
        to,
    )


def fax_cover(c: Ctx) -> Draft:
    pt = c.patient()
    org, dst = c.org(), c.org()
    frm, prov = c.staff(org, "Medical Records"), c.provider(dst)
    body = (
        f"FAX COVER SHEET\n\nTo: {c.rec('name', prov.dr, False)}\n"
        f"Fax: {c.ophone(dst.fax, 'fax')}\nFrom: {c.rec('name', f'{frm.first} {frm.last}', False)}"
        f"\nPages: {c.randint(2, 30)}\n"
        f"RE: {c.pname(pt)}, {c.pdob(pt)}\n"
        f"Comments: {c.choice(['Records for', 'Consult notes re', 'Results pertaining to'])} "
        f"{c.dx(pt.condition)} evaluation.\n\n" + c.choice(CONFIDENTIALITY)
    )
    return draft(c, subj_prefix(c) + c.choice(["Fax", "Records", "Fax cover"]), body, frm, [prov])


_INNER.extend(
    [
        referral,
        lab_result,
        clinical_update,
        billing_ssn,
        _patient_message,
        rx_refill,
        medicare_eligibility,
        prior_auth,
    ]
)

# (category, function, weight)
PHI_FAMILIES: tuple[tuple[str, Callable[[Ctx], Draft], float], ...] = (
    ("referral", referral, 3),
    ("lab_result", lab_result, 3),
    ("billing_ssn", billing_ssn, 2),
    ("medicare_eligibility", medicare_eligibility, 2),
    ("appointment_reminder", appointment_reminder, 2),
    ("discharge_summary", discharge_summary, 2),
    ("prior_auth", prior_auth, 2),
    ("clinical_update", clinical_update, 3),
    ("identifier_only", identifier_only, 2),
    ("subject_only", subject_only, 2),
    ("forwarded_thread", forwarded_thread, 3),
    ("html_table", html_table, 2),
    ("csv_attachment", csv_attachment, 2),
    ("zip_attachment", zip_attachment, 1.5),
    ("docx_attachment", docx_attachment, 2),
    ("pdf_attachment", pdf_attachment, 2),
    ("xlsx_attachment", xlsx_attachment, 2),
    ("patient_payment", patient_payment, 1.5),
    ("patient_registration", patient_registration, 1.5),
    ("device_implant", device_implant, 1),
    ("portal_audit", portal_audit, 1),
    ("injury_claim", injury_claim, 1),
    ("rx_refill", rx_refill, 1.5),
    ("care_coordination", care_coordination, 1.5),
    ("fax_cover", fax_cover, 1),
)
