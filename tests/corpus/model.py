"""Building blocks shared by the template families: people, organisations, the label recorder.

A template family is a function ``(Ctx) -> Draft``. Every value that a label depends on goes
through ``Ctx.rec`` (or one of the ``p*`` helpers, which call it) at the moment it is rendered, so
a sample's labels are derived from what was actually written into the message, never declared
separately. ``phi=True`` values are patient PHI; ``phi=False`` values are identifier-shaped or
clinical values that are present but are not patient PHI (a provider's NPI, a clinic's phone
number, an ICD-10 code in a coding tip).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TypeVar

from faker import Faker

from tests.corpus import identifiers as ids
from tests.corpus import vocab

T = TypeVar("T")

TODAY = dt.date(2025, 6, 30)  # the corpus's "now": dates of service fall before it
SERVICE_START = dt.date(2024, 1, 2)


# --------------------------------------------------------------------------- drafts


@dataclass
class Attachment:
    filename: str
    data: bytes | EmailMessage
    maintype: str
    subtype: str


@dataclass
class Draft:
    """What a template produces; ``message.build`` turns it into RFC 5322 bytes."""

    subject: str
    text: str | None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    sender: tuple[str, str] | None = None  # (display name, address)
    to: list[tuple[str, str]] = field(default_factory=list)
    cc: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    # "auto": the builder picks plain / alternative / html-only; "plain" / "html" force.
    body_mode: str = "auto"
    reply: bool = False


# --------------------------------------------------------------------------- people


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    state: str
    zip: str


@dataclass(frozen=True)
class Patient:
    first: str
    middle: str
    last: str
    sex: str  # "F" or "M"
    title: str  # Mr., Mrs., Ms., Miss
    dob: dt.date
    mrn: str
    ssn: str
    mbi: str
    medicaid: str
    member: str
    plan: str
    phone: str
    email: str
    address: Address
    account: str
    dl_state: str
    dl: str
    passport: str
    condition: vocab.Condition

    def age_on(self, day: dt.date) -> int:
        return day.year - self.dob.year - ((day.month, day.day) < (self.dob.month, self.dob.day))


@dataclass(frozen=True)
class Staff:
    first: str
    last: str
    role: str
    email: str
    phone: str
    ext: str
    sex: str = ""


@dataclass(frozen=True)
class Provider:
    first: str
    last: str
    credential: str  # MD, DO, NP, PA-C
    specialty: str
    npi: str
    dea: str
    email: str

    @property
    def dr(self) -> str:
        if self.credential in ("MD", "DO"):
            return f"Dr. {self.first} {self.last}"
        return f"{self.first} {self.last}, {self.credential}"


@dataclass(frozen=True)
class Org:
    name: str
    domain: str
    address: Address
    phone: str
    fax: str


# --------------------------------------------------------------------------- label recorder


@dataclass
class Rec:
    phi: list[tuple[str, str]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)


class Ctx:
    """Randomness, fake data and the label recorder for one sample."""

    def __init__(self, rng: random.Random, fake: Faker) -> None:
        self.rng = rng
        self.fake = fake
        self.r = Rec()
        self.date = ids.random_date(rng, SERVICE_START, TODAY)  # the message's date

    # ---- randomness
    def choice(self, seq: Sequence[T]) -> T:
        return self.rng.choice(seq)

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        return self.rng.sample(list(seq), k)

    def pick(self, *options: Callable[[], T]) -> T:
        """Choose one alternative and render only that one (so only it is recorded)."""
        return self.rng.choice(options)()

    def either(self, a: Staff | Provider, b: Staff | Provider) -> Staff | Provider:
        return a if self.rng.random() < 0.5 else b

    def maybe(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def randint(self, a: int, b: int) -> int:
        return self.rng.randint(a, b)

    def shuffled(self, seq: Sequence[T]) -> list[T]:
        out = list(seq)
        self.rng.shuffle(out)
        return out

    # ---- recording
    def rec(self, typ: str, text: str, phi: bool = True) -> str:
        (self.r.phi if phi else self.r.other).append((typ, text))
        return text

    # ---- dates
    def fdate(self, d: dt.date, styles: Sequence[int] | None = None) -> str:
        return ids.fmt_date(d, self.choice(styles) if styles else self.rng.randrange(12))

    def recent(self, days_back: int = 120, days_fwd: int = 0) -> dt.date:
        return self.date + dt.timedelta(days=self.randint(-days_back, days_fwd))

    def future(self, lo: int = 2, hi: int = 60) -> dt.date:
        return self.date + dt.timedelta(days=self.randint(lo, hi))

    def time(self) -> str:
        h = self.randint(7, 16)
        m = self.choice([0, 0, 15, 30, 45, 10, 20, 40, 50])
        ap = "AM" if h < 12 else "PM"
        h12 = h if h <= 12 else h - 12
        return self.choice(
            [f"{h12}:{m:02d} {ap}", f"{h12}:{m:02d}{ap.lower()}", f"{h:02d}:{m:02d}"]
        )

    # ---- people and organisations
    def person_name(self, sex: str | None = None) -> tuple[str, str, str]:
        sex = sex or self.choice("FM")
        first = self.fake.first_name_female() if sex == "F" else self.fake.first_name_male()
        return first, self.fake.last_name(), sex

    def address(self) -> Address:
        state = self.fake.state_abbr(include_territories=False)
        street = self.fake.street_address()
        if self.maybe(0.15) and not any(k in street for k in ("Apt", "Suite")):
            street += " " + self.fake.secondary_address()
        return Address(street, self.fake.city(), state, self.fake.zipcode_in_state(state))

    def patient(self, min_age: int = 1, max_age: int = 89) -> Patient:
        """A synthetic patient whose sex and age fit the condition drawn for them."""
        fits = [c for c in vocab.CONDITIONS if c.ages[0] <= max_age and c.ages[1] >= min_age]
        condition = self.choice(fits)
        lo, hi = max(min_age, condition.ages[0]), min(max_age, condition.ages[1])
        first, last, sex = self.person_name(condition.sex or None)
        # born so that the age on TODAY lies in [lo, hi]
        latest = dt.date(TODAY.year - lo, TODAY.month, TODAY.day)
        earliest = dt.date(TODAY.year - hi - 1, TODAY.month, TODAY.day) + dt.timedelta(days=1)
        dob = ids.random_date(self.rng, earliest, latest)
        addr = self.address()
        title = "Mr." if sex == "M" else self.choice(["Ms.", "Ms.", "Mrs.", "Mrs.", "Miss"])
        if TODAY.year - dob.year < 16:
            title = ""  # children are not "Mr." or "Ms."
        dl_state = self.choice(ids.DL_STATES)
        middle = self.fake.first_name_female() if sex == "F" else self.fake.first_name_male()
        local = (
            self.choice(
                [
                    f"{first}.{last}",
                    f"{first[0]}{last}",
                    f"{first}{last[0]}",
                    f"{last}{first[0]}",
                    f"{first}_{last}",
                ]
            )
            .lower()
            .replace("'", "")
        )
        if self.maybe(0.4):
            local += str(self.randint(1, 99))
        return Patient(
            first=first, middle=middle, last=last, sex=sex, title=title, dob=dob,
            mrn=ids.mrn(self.rng), ssn=ids.ssn_digits(self.rng), mbi=ids.mbi(self.rng),
            medicaid=ids.medicaid_id(self.rng, addr.state), member=ids.member_id(self.rng),
            plan=self.choice(vocab.HEALTH_PLANS), phone=ids.phone_digits(self.rng),
            email=f"{local}@{self.choice(vocab.PERSONAL_DOMAINS)}", address=addr,
            account=ids.account_number(self.rng), dl_state=dl_state,
            dl=ids.drivers_license(self.rng, dl_state), passport=ids.passport(self.rng),
            condition=condition,
        )  # fmt: skip

    def org(self, domain: str | None = None) -> Org:
        base = self.choice([self.fake.last_name(), self.fake.city(), self.fake.city()])
        name = f"{base} {self.choice(vocab.ORG_SUFFIXES)}"
        return Org(
            name,
            domain or self.choice(vocab.ORG_DOMAINS),
            self.address(),
            ids.phone_digits(self.rng),
            ids.phone_digits(self.rng),
        )

    def vendor_org(self) -> Org:
        return Org(
            self.fake.company(),
            self.choice(vocab.VENDOR_DOMAINS),
            self.address(),
            ids.phone_digits(self.rng),
            ids.phone_digits(self.rng),
        )

    def staff(self, org: Org, role: str | None = None) -> Staff:
        first, last, sex = self.person_name()
        role = role or self.choice([
            "Referral Coordinator", "Medical Assistant", "RN Care Manager", "Billing Specialist",
            "Front Desk", "Practice Manager", "Patient Access Representative", "Scheduler",
            "Clinical Coordinator", "Office Manager", "Revenue Cycle Analyst", "LPN",
        ])  # fmt: skip
        local = self.choice([f"{first}.{last}", f"{first[0]}{last}", f"{first}{last[0]}"])
        return Staff(
            first,
            last,
            role,
            f"{local.lower().replace(' ', '')}@{org.domain}",
            ids.phone_digits(self.rng),
            str(self.randint(1000, 7999)),
            sex,
        )

    def provider(self, org: Org | None = None, specialty: str | None = None) -> Provider:
        first, last, _ = self.person_name()
        domain = org.domain if org else self.choice(vocab.ORG_DOMAINS)
        cred = self.choice(["MD", "MD", "MD", "DO", "NP", "PA-C"])
        local = self.choice([f"{first}.{last}", f"{first[0]}{last}", f"dr.{last}"])
        return Provider(
            first,
            last,
            cred,
            specialty or self.choice(vocab.SPECIALTIES),
            ids.npi(self.rng),
            ids.dea(self.rng, last),
            f"{local.lower().replace(' ', '')}@{domain}",
        )

    def addr_of(self, who: Staff | Provider) -> tuple[str, str]:
        if isinstance(who, Provider):
            return (
                who.dr.replace("Dr. ", "")
                + (f", {who.credential}" if who.credential in ("MD", "DO") else ""),
                who.email,
            )
        return (f"{who.first} {who.last}", who.email)

    # ---- rendering helpers for non-patient contact data (recorded as other)
    def ophone(self, digits: str, typ: str = "phone") -> str:
        return self.rec(typ, ids.fmt_phone(digits, self.rng.randrange(7)), phi=False)

    def oaddress(self, a: Address, one_line: bool | None = None) -> str:
        one_line = self.maybe() if one_line is None else one_line
        street = self.rec("address", a.street, phi=False)
        z = self.rec("zip", a.zip, phi=False)
        sep = ", " if one_line else "\n"
        return f"{street}{sep}{a.city}, {a.state} {z}"

    def signature(self, who: Staff | Provider, org: Org, *, short: bool = False) -> str:
        if isinstance(who, Provider):
            name = self.rec("name", who.dr, phi=False)
            lines = [name, f"{who.specialty}, {org.name}"]
        else:
            name = self.rec("name", f"{who.first} {who.last}", phi=False)
            lines = [name, who.role, org.name]
        if short:
            return "\n".join([self.choice(["Thanks,", "Best,", "Regards,", "Thank you,"]), *lines])
        if self.maybe(0.8):
            lines.append(self.oaddress(org.address, one_line=self.maybe(0.6)))
        phone_line = self.choice(["Phone", "Tel", "P", "Office", "Main"])
        lines.append(f"{phone_line}: {self.ophone(org.phone)}")
        if isinstance(who, Staff) and self.maybe(0.4):
            lines[-1] += f" ext. {who.ext}"
        if self.maybe(0.6):
            lines.append(f"{self.choice(['Fax', 'F', 'Fax #'])}: {self.ophone(org.fax, 'fax')}")
        if self.maybe(0.3):
            lines.append(self.rec("url", f"https://www.{org.domain}", phi=False))
        sig = "\n".join(
            [
                self.choice(
                    ["Thanks,", "Best regards,", "Regards,", "Thank you,", "Sincerely,", "--"]
                ),
                *lines,
            ]
        )
        if self.maybe(0.5):
            sig += "\n\n" + self.choice(CONFIDENTIALITY)
        return sig

    # ---- patient helpers (recorded as PHI)
    def pname(self, pt: Patient, style: int | None = None) -> str:
        style = self.rng.randrange(9) if style is None else style
        text = [
            f"{pt.first} {pt.last}",
            f"{pt.last}, {pt.first}",
            f"{pt.last.upper()}, {pt.first.upper()}",
            f"{pt.first} {pt.middle[0]}. {pt.last}",
            f"{pt.title} {pt.first} {pt.last}".strip(),
            f"{pt.first} {pt.last}",
            f"{pt.last}, {pt.first} {pt.middle[0]}.",
            f"{pt.first.upper()} {pt.last.upper()}",
            f"{pt.first} {pt.middle} {pt.last}",
        ][style]
        return self.rec("name", text)

    def ptitled(self, pt: Patient) -> str:
        return self.rec("name", f"{pt.title} {pt.last}" if pt.title else f"{pt.first} {pt.last}")

    def pdob(self, pt: Patient, labelled: bool = True) -> str:
        d = self.rec("dob", self.fdate(pt.dob))
        if not labelled:
            return d
        return self.choice([
            f"DOB: {d}", f"DOB {d}", f"D.O.B.: {d}", f"D.O.B. {d}", f"Date of birth: {d}",
            f"Date of Birth: {d}", f"born on {d}", f"Birthdate: {d}", f"Birth date {d}",
            f"DOB/Age: {d} ({pt.age_on(self.date)} y/o)", f"b. {d}", f"dob {d}",
        ])  # fmt: skip

    def pmrn(self, pt: Patient, labelled: bool = True) -> str:
        v = self.rec("mrn", pt.mrn)
        if not labelled:
            return v
        return self.choice(
            [
                f"MRN: {v}",
                f"MRN {v}",
                f"MRN#{v}",
                f"Med Rec #: {v}",
                f"Medical Record Number: {v}",
                f"Patient ID: {v}",
                f"Chart #: {v}",
                f"MR# {v}",
                f"Acct/MRN {v}",
                f"Pt ID {v}",
            ]
        )

    def pssn(self, pt: Patient, labelled: bool = True) -> str:
        v = self.rec("ssn", ids.fmt_ssn(pt.ssn, self.choice([0, 0, 0, 1, 2])))
        if not labelled:
            return v
        return self.choice(
            [
                f"SSN: {v}",
                f"SSN {v}",
                f"Social Security #: {v}",
                f"SS#: {v}",
                f"Social Security Number: {v}",
                f"social {v}",
                f"SSN# {v}",
            ]
        )

    def pmbi(self, pt: Patient, labelled: bool = True) -> str:
        v = self.rec("mbi", ids.fmt_mbi(pt.mbi, self.maybe(0.4)))
        if not labelled:
            return v
        return self.choice(
            [
                f"MBI: {v}",
                f"MBI {v}",
                f"Medicare ID: {v}",
                f"Medicare Beneficiary Identifier: {v}",
                f"Medicare #: {v}",
                f"Medicare number {v}",
            ]
        )

    def pmedicaid(self, pt: Patient) -> str:
        v = self.rec("medicaid_id", pt.medicaid)
        return self.choice(
            [
                f"Medicaid ID: {v}",
                f"Medicaid # {v}",
                f"Medicaid ID# {v}",
                f"{pt.address.state} Medicaid {v}",
                f"Medicaid recipient ID {v}",
            ]
        )

    def pmember(self, pt: Patient, with_plan: bool = True) -> str:
        v = self.rec("member_id", pt.member)
        label = self.choice(
            [
                "Member ID",
                "Member ID#",
                "Subscriber ID",
                "Insurance ID",
                "Policy #",
                "ID#",
                "Member #",
            ]
        )
        if with_plan:
            return f"{pt.plan}, {label}: {v}"
        return f"{label}: {v}"

    def pphone(self, pt: Patient, labelled: bool = True) -> str:
        v = self.rec("phone", ids.fmt_phone(pt.phone, self.rng.randrange(7)))
        if not labelled:
            return v
        return self.choice(
            [
                f"Phone: {v}",
                f"Cell: {v}",
                f"Home phone {v}",
                f"Tel: {v}",
                f"best number {v}",
                f"Mobile: {v}",
                f"Ph {v}",
            ]
        )

    def pemail(self, pt: Patient) -> str:
        return self.rec("email", pt.email)

    def paddress(self, pt: Patient, one_line: bool | None = None) -> str:
        a = pt.address
        one_line = self.maybe() if one_line is None else one_line
        street = self.rec("address", a.street)
        z = self.rec("zip", a.zip)
        return f"{street}{', ' if one_line else chr(10)}{a.city}, {a.state} {z}"

    def paccount(self, pt: Patient) -> str:
        v = self.rec("account", pt.account)
        return self.choice(
            [
                f"Account #: {v}",
                f"Acct# {v}",
                f"Account No. {v}",
                f"Guarantor account {v}",
                f"Patient account: {v}",
                f"HAR {v}",
            ]
        )

    def pdl(self, pt: Patient) -> str:
        v = self.rec("drivers_license", pt.dl)
        return self.choice(
            [
                f"Driver's License: {pt.dl_state} {v}",
                f"DL# {v} ({pt.dl_state})",
                f"{pt.dl_state} driver license number {v}",
                f"DL: {v}",
            ]
        )

    def ppassport(self, pt: Patient) -> str:
        v = self.rec("passport", pt.passport)
        return self.choice([f"Passport #: {v}", f"US passport {v}", f"Passport No. {v}"])

    # ---- clinical helpers
    def dx(self, cond: vocab.Condition, phi: bool = True) -> str:
        return self.rec("diagnosis", self.choice(cond.terms), phi)

    def icd(self, code: str, phi: bool = True) -> str:
        return self.rec("icd10", code, phi)

    def icd_any(self, phi: bool = True) -> tuple[str, str]:
        code, desc = self.choice(vocab.ICD10)
        return self.rec("icd10", code, phi), desc

    def cpt(self, phi: bool = True) -> tuple[str, str]:
        code, desc = self.choice(vocab.CPT)
        return self.rec("cpt", code, phi), desc

    def med(self, name: str | None = None, phi: bool = True, dose: bool = True) -> str:
        drug = (
            next(d for d in vocab.MEDICATIONS if d.name == name)
            if name
            else self.choice(vocab.MEDICATIONS)
        )
        text = f"{drug.name} {self.choice(drug.doses)}" if dose else drug.name
        return self.rec("medication", text, phi)

    def cond_med(self, cond: vocab.Condition, phi: bool = True) -> str:
        return self.med(self.choice(cond.drugs), phi) if cond.drugs else self.med(phi=phi)

    def lab(self, name: str | None = None, phi: bool = True) -> str:
        lab = next(x for x in vocab.LABS if name in x.names) if name else self.choice(vocab.LABS)
        label = name or self.choice(lab.names)
        value = self.rng.uniform(lab.low, lab.high)
        v = f"{value:.{lab.decimals}f}" if lab.decimals else str(round(value))
        unit = lab.unit
        if unit == "%":
            text = f"{label} {v}%"
        elif unit:
            text = self.choice([f"{label} {v} {unit}", f"{label}: {v} {unit}", f"{label} {v}"])
        else:
            text = f"{label} {v}"
        return self.rec("lab", text, phi)

    def cond_lab(self, cond: vocab.Condition, phi: bool = True) -> str:
        return self.lab(self.choice(cond.labs), phi) if cond.labs else self.lab(phi=phi)


CONFIDENTIALITY = (
    "CONFIDENTIALITY NOTICE: This e-mail, including any attachments, is for the sole use of the "
    "intended recipient(s) and may contain confidential and privileged information. Any "
    "unauthorized review, use, disclosure or distribution is prohibited. If you are not the "
    "intended recipient, please contact the sender by reply e-mail and destroy all copies.",
    "This message may contain protected health information. If you received it in error, "
    "please notify the sender immediately and delete it.",
    "The information in this email is confidential and intended only for the addressee. "
    "Please consider the environment before printing this email.",
    "Notice: This communication may contain privileged or confidential information protected "
    "by state and federal law, including HIPAA. Do not forward without authorization.",
)
